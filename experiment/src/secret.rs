//! A connection URL's password never reaches a message: the one way every crate hides it, for
//! Postgres URLs and MongoDB URIs alike.

use std::ops::Range;

/// What stands for a password in anything printed.
pub const MASK: &str = "***";

/// Where `url`'s password stands, as a byte range, if it has a non-empty one
/// (`s3cret` in `postgres://app:s3cret@db:5432/x`). Only the authority is searched, so an `@`
/// in the path or the options is not mistaken for the end of a user name.
fn password_range(url: &str) -> Option<Range<usize>> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (user_info, _) = rest[..authority_end].rsplit_once('@')?;
    let (user, password) = user_info.split_once(':')?;
    let start = scheme.len() + "://".len() + user.len() + ":".len();
    (!password.is_empty()).then(|| start..start + password.len())
}

/// `url` with its password replaced by [`MASK`] (`postgres://app:***@db:5432/x`,
/// `mongodb://lab:***@h1,h2/?replicaSet=rs0`); a URL without one comes back as it was.
pub fn redact_url(url: &str) -> String {
    match password_range(url) {
        Some(at) => format!("{}{MASK}{}", &url[..at.start], &url[at.end..]),
        None => url.to_string(),
    }
}

/// `message` (a driver's error, say) with `url`'s password masked wherever it appears: inside
/// the URL, if the message quotes it, and anywhere else the driver put it.
pub fn scrub(message: &str, url: &str) -> String {
    match password_range(url) {
        Some(at) => message.replace(&url[at], MASK),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_nothing_else_changes() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact_url("mongodb://lab:s3cret@h1,h2:27018,h3/?replicaSet=rs0"),
            "mongodb://lab:***@h1,h2:27018,h3/?replicaSet=rs0"
        );
        for unchanged in [
            "postgres://db/x",
            "postgres://alice@h/db",
            "postgres://alice:@h/db",
            "mongodb://h1/?authSource=a@b",
            "not a url",
        ] {
            assert_eq!(redact_url(unchanged), unchanged);
        }
    }

    #[test]
    fn scrubbed_messages_keep_no_trace_of_the_password() {
        let url = "postgres://alice:s3cret@db.example:5432/lab";
        let message = scrub(
            &format!("password authentication failed (s3cret) at {url}"),
            url,
        );
        assert_eq!(
            message,
            "password authentication failed (***) at postgres://alice:***@db.example:5432/lab"
        );
        assert_eq!(scrub("refused", "postgres://db/x"), "refused");
    }
}
