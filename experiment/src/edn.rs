//! A reader for EDN, the data notation Jepsen writes its histories in.
//!
//! Enough of EDN for any history Jepsen writes: nil, booleans, integers (with `N`), floats (with
//! `M`), strings, characters, keywords, symbols, lists, vectors, maps, sets, tagged elements
//! (`#jepsen.history.Op{...}`, read as the element they tag), `#_` discards and `;` comments.
//! Every value carries the line and column it started at, so a bad history is reported where it
//! is bad.

use std::fmt;

/// Where in the text a value started (both from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One EDN value.
#[derive(Debug, Clone, PartialEq)]
pub enum Edn {
    /// `nil`
    Nil,
    /// `true` / `false`
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A character, `\a`.
    Char(char),
    /// A keyword, without its colon: `:ok` is `Keyword("ok")`.
    Keyword(String),
    /// A symbol.
    Symbol(String),
    /// `( ... )` or `[ ... ]`.
    Seq(Vec<Spanned>),
    /// `{ k v ... }`, in the order written.
    Map(Vec<(Spanned, Spanned)>),
    /// `#{ ... }`.
    Set(Vec<Spanned>),
}

/// A value and where it started.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned {
    /// The value.
    pub value: Edn,
    /// Where it started.
    pub pos: Pos,
}

impl Spanned {
    /// The value under keyword `key`, if this is a map that has it.
    pub fn get(&self, key: &str) -> Option<&Spanned> {
        match &self.value {
            Edn::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Edn::Keyword(name) if name == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A syntax error and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct EdnError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

/// Reads every top-level value in `text`, in order.
pub fn read_all(text: &str) -> Result<Vec<Spanned>, EdnError> {
    let mut reader = Reader::new(text);
    let mut values = Vec::new();
    while let Some(v) = reader.next_value()? {
        values.push(v);
    }
    Ok(values)
}

struct Reader<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    pos: Pos,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Reader {
            chars: text.chars().peekable(),
            pos: Pos { line: 1, col: 1 },
        }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.pos.line += 1;
            self.pos.col = 1;
        } else {
            self.pos.col += 1;
        }
        Some(c)
    }

    fn error<T>(&self, pos: Pos, message: impl Into<String>) -> Result<T, EdnError> {
        Err(EdnError {
            pos,
            message: message.into(),
        })
    }

    /// Skips whitespace, commas and comments.
    fn skip_blank(&mut self) {
        while let Some(&c) = self.chars.peek() {
            if c.is_whitespace() || c == ',' {
                self.bump();
            } else if c == ';' {
                while self.bump().is_some_and(|c| c != '\n') {}
            } else {
                break;
            }
        }
    }

    /// The next value, or `None` at the end of the text.
    fn next_value(&mut self) -> Result<Option<Spanned>, EdnError> {
        self.skip_blank();
        let pos = self.pos;
        let Some(&c) = self.chars.peek() else {
            return Ok(None);
        };
        let value = match c {
            '(' | '[' => {
                self.bump();
                Edn::Seq(self.items(if c == '(' { ')' } else { ']' }, pos)?)
            }
            '{' => {
                self.bump();
                self.map(pos)?
            }
            ')' | ']' | '}' => return self.error(pos, format!("unexpected `{c}`")),
            '"' => {
                self.bump();
                Edn::Str(self.string(pos)?)
            }
            '\\' => {
                self.bump();
                Edn::Char(self.character(pos)?)
            }
            '#' => {
                self.bump();
                return self.dispatch(pos).map(Some);
            }
            _ => self.atom(pos)?,
        };
        Ok(Some(Spanned { value, pos }))
    }

    /// The values up to `close`.
    fn items(&mut self, close: char, open: Pos) -> Result<Vec<Spanned>, EdnError> {
        let mut items = Vec::new();
        loop {
            self.skip_blank();
            match self.chars.peek() {
                None => return self.error(open, format!("unclosed, expected `{close}`")),
                Some(&c) if c == close => {
                    self.bump();
                    return Ok(items);
                }
                _ => match self.next_value()? {
                    Some(v) => items.push(v),
                    None => return self.error(open, format!("unclosed, expected `{close}`")),
                },
            }
        }
    }

    fn map(&mut self, open: Pos) -> Result<Edn, EdnError> {
        let items = self.items('}', open)?;
        if items.len() % 2 == 1 {
            return self.error(open, "a map needs an even number of forms");
        }
        let mut entries = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            entries.push((k, v));
        }
        Ok(Edn::Map(entries))
    }

    /// After `#`: a set, a discard, or a tagged element.
    fn dispatch(&mut self, pos: Pos) -> Result<Spanned, EdnError> {
        match self.chars.peek() {
            Some('{') => {
                self.bump();
                let items = self.items('}', pos)?;
                Ok(Spanned {
                    value: Edn::Set(items),
                    pos,
                })
            }
            Some('_') => {
                self.bump();
                if self.next_value()?.is_none() {
                    return self.error(pos, "`#_` discards nothing");
                }
                match self.next_value()? {
                    Some(v) => Ok(v),
                    None => self.error(pos, "nothing after a discarded form"),
                }
            }
            _ => {
                // A tag such as `#inst` or `#jepsen.history.Op`: read the element it tags.
                self.token();
                match self.next_value()? {
                    Some(v) => Ok(Spanned { pos, ..v }),
                    None => self.error(pos, "a tag with nothing to tag"),
                }
            }
        }
    }

    fn string(&mut self, open: Pos) -> Result<String, EdnError> {
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return self.error(open, "unclosed string"),
                Some('"') => return Ok(s),
                Some('\\') => match self.bump() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('r') => s.push('\r'),
                    Some(c) => s.push(c),
                    None => return self.error(open, "unclosed string"),
                },
                Some(c) => s.push(c),
            }
        }
    }

    fn character(&mut self, pos: Pos) -> Result<char, EdnError> {
        let name = self.token();
        match name.as_str() {
            "newline" => Ok('\n'),
            "space" => Ok(' '),
            "tab" => Ok('\t'),
            "return" => Ok('\r'),
            _ if name.chars().count() == 1 => Ok(name.chars().next().unwrap_or(' ')),
            _ if name.is_empty() => match self.bump() {
                Some(c) => Ok(c),
                None => self.error(pos, "a backslash with no character"),
            },
            _ => self.error(pos, format!("unknown character `\\{name}`")),
        }
    }

    /// Characters up to the next delimiter.
    fn token(&mut self) -> String {
        let mut t = String::new();
        while let Some(&c) = self.chars.peek() {
            if c.is_whitespace() || ",()[]{}\";".contains(c) {
                break;
            }
            t.push(c);
            self.bump();
        }
        t
    }

    fn atom(&mut self, pos: Pos) -> Result<Edn, EdnError> {
        let t = self.token();
        if let Some(name) = t.strip_prefix(':') {
            return Ok(Edn::Keyword(name.to_string()));
        }
        match t.as_str() {
            "nil" => return Ok(Edn::Nil),
            "true" => return Ok(Edn::Bool(true)),
            "false" => return Ok(Edn::Bool(false)),
            _ => {}
        }
        let numeric = t.starts_with(|c: char| c.is_ascii_digit())
            || (t.len() > 1
                && t.starts_with(['-', '+'])
                && t[1..].starts_with(|c: char| c.is_ascii_digit()));
        if !numeric {
            return Ok(Edn::Symbol(t));
        }
        let digits = t.trim_end_matches('N');
        if let Ok(i) = digits.parse::<i64>() {
            return Ok(Edn::Int(i));
        }
        match t.trim_end_matches('M').parse::<f64>() {
            Ok(f) => Ok(Edn::Float(f)),
            Err(_) => self.error(pos, format!("not a number: `{t}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_jepsen_operation() {
        let v =
            read_all("{:type :invoke, :f :cas, :value [1 2], :process 0, :time 12N}\n").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].get("type").unwrap().value,
            Edn::Keyword("invoke".into())
        );
        let Edn::Seq(pair) = &v[0].get("value").unwrap().value else {
            panic!()
        };
        assert_eq!(pair[1].value, Edn::Int(2));
        assert_eq!(v[0].get("time").unwrap().value, Edn::Int(12));
    }

    #[test]
    fn reads_tags_sets_discards_comments_and_strings() {
        let text = "; a comment\n#jepsen.history.Op{:a #{1 2} :b #_ 3 \"x\\\"y\" :c \\a}";
        let v = read_all(text).unwrap();
        assert_eq!(v[0].pos, Pos { line: 2, col: 1 });
        assert!(matches!(&v[0].get("a").unwrap().value, Edn::Set(s) if s.len() == 2));
        assert_eq!(v[0].get("b").unwrap().value, Edn::Str("x\"y".into()));
        assert_eq!(v[0].get("c").unwrap().value, Edn::Char('a'));
    }

    #[test]
    fn errors_say_where() {
        let err = read_all("{:a 1}\n  {:b [1 2}").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, col: 11 });
        let err = read_all("{:a}").unwrap_err();
        assert_eq!((err.pos.line, err.pos.col), (1, 1));
        assert!(err.message.contains("even"), "{err}");
    }
}
