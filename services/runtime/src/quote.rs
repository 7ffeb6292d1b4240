//! User-supplied values quoted in error messages, cut to a short prefix: an error
//! never echoes a whole oversized input back (a 3 MB task name would become a
//! 3 MB error, past what gRPC clients accept as metadata, and memory the gateway
//! spends on a caller's mistake).

use std::fmt;

/// Characters of a value quoted in an error; longer values are cut and marked.
pub const QUOTED_CHARS: usize = 64;

/// A value as an error message quotes it (see [`quoted`]).
#[derive(Clone, Copy, Debug)]
pub struct Quoted<'a>(&'a str);

/// `value` in double quotes with control characters escaped, like `{:?}`; past
/// [`QUOTED_CHARS`] characters it is cut and followed by its length, e.g.
/// `"aaaa…" (… 3000000 characters)`.
pub fn quoted(value: &str) -> Quoted<'_> {
    Quoted(value)
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(QUOTED_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((end, _)) => write!(
                f,
                "{:?}… (cut, {} characters in all)",
                &self.0[..end],
                self.0.chars().count()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole_and_long_ones_cut() {
        assert_eq!(quoted("demo echo").to_string(), "\"demo echo\"");
        assert_eq!(quoted("a\nb").to_string(), "\"a\\nb\"");
        let long = "é".repeat(3_000_000);
        let shown = quoted(&long).to_string();
        assert!(shown.len() < 200, "{}", shown.len());
        assert!(
            shown.ends_with("… (cut, 3000000 characters in all)"),
            "{shown}"
        );
        assert!(shown.starts_with(&format!("\"{}", "é".repeat(QUOTED_CHARS))));
    }
}
