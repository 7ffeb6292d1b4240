//! Syntax of task names, shared by the gateway (validating submissions), the
//! dispatcher (validating worker hellos) and workers.

/// Longest task name.
pub const MAX_TASK_NAME: usize = 128;

/// [`is_task_name`] as a regular expression (length aside), for API documents.
pub const TASK_NAME_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z][A-Za-z0-9_-]*)*$";

/// Whether `name` is a task name: dot-separated segments of ASCII letters, digits,
/// `_` and `-`, each starting with a letter, at most 128 characters. Such names
/// are also valid NATS subject tokens.
pub fn is_task_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TASK_NAME
        && name.split('.').all(|segment| {
            segment
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::is_task_name;

    #[test]
    fn accepts_dotted_names_and_refuses_subject_wildcards() {
        for ok in ["demo.echo", "a", "ml.train-v2", "Media.stt_en"] {
            assert!(is_task_name(ok), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a.*",
            "a.>",
            "1a",
            "a.-b",
            long.as_str(),
        ] {
            assert!(!is_task_name(bad), "{bad}");
        }
    }
}
