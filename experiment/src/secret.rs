//! A connection URL's password never reaches a message: the one way every crate hides it, for
//! Postgres URLs and MongoDB URIs alike.

/// What stands for a password in anything printed.
pub const MASK: &str = "***";

/// The user-info part of `url` and where it ends (`app:s3cret` in
/// `postgres://app:s3cret@db:5432/x`), with the scheme's length; `None` without one. Only the
/// authority is searched, so an `@` in the path or options is not mistaken for one.
fn user_info(url: &str) -> Option<(usize, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (user_info, _) = rest[..authority_end].rsplit_once('@')?;
    Some((scheme.len() + 3, user_info))
}

/// The password in `url`, if it has a non-empty one.
fn password(url: &str) -> Option<&str> {
    let (_, user_info) = user_info(url)?;
    user_info
        .split_once(':')
        .map(|(_, pw)| pw)
        .filter(|pw| !pw.is_empty())
}

/// `url` with its password replaced by [`MASK`] (`postgres://app:***@db:5432/x`,
/// `mongodb://lab:***@h1,h2/?replicaSet=rs0`); a URL without one comes back as it was.
pub fn redact_url(url: &str) -> String {
    match (user_info(url), password(url)) {
        (Some((start, user_info)), Some(_)) => {
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            let hosts = &url[start + user_info.len()..];
            format!("{}{user}:{MASK}{hosts}", &url[..start])
        }
        _ => url.to_string(),
    }
}

/// `message` (a driver's error, say) with `url` redacted wherever it appears and its password
/// masked wherever else the driver put it.
pub fn scrub(message: &str, url: &str) -> String {
    let out = message.replace(url, &redact_url(url));
    match password(url) {
        Some(pw) => out.replace(pw, MASK),
        None => out,
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
