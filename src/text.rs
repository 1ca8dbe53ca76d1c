//! Text that people read: what may not be in it, and how to show it safely.

/// Whether `c` can change how the text around it is displayed: a control character (C0 but
/// line feed and tab, DEL, C1) or a bidirectional formatting character (U+061C, U+200E,
/// U+200F, U+202A to U+202E, U+2066 to U+2069).
pub fn hides_text(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` for a terminal: every control and bidirectional formatting character, line feeds
/// and tabs included, written as an escape (`\u{1b}`), so that what a caller sent cannot move
/// the cursor, clear lines or reorder the text shown around it.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if hides_text(c) || c == '\n' || c == '\t' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_overrides_are_shown_not_obeyed() {
        assert_eq!(
            escaped("ok \u{1b}[1A\r\u{202e}x\n"),
            "ok \\u{1b}[1A\\u{d}\\u{202e}x\\u{a}"
        );
        assert_eq!(
            escaped("schema change for INC-77 (é, 日本)"),
            "schema change for INC-77 (é, 日本)"
        );
        assert!(hides_text('\u{9b}') && hides_text('\u{7f}') && hides_text('\u{2067}'));
        assert!(!hides_text('\n') && !hides_text('\t') && !hides_text('a'));
    }
}
