//! Text that people read: what may not be in it, and how to show it safely.

/// Whether `c` can change how the text around it is displayed, or hide text: a control
/// character (C0 but line feed and tab, DEL, C1), a line or paragraph separator (U+2028,
/// U+2029, which renderers show as a new line), or a format character (Unicode category Cf:
/// bidirectional overrides and isolates, zero-width characters, the byte order mark, the
/// invisible tag characters U+E0000 to U+E007F, ...).
pub fn hides_text(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || FORMAT.iter().any(|r| r.contains(&c))
}

/// Checks free text a caller sends for people to read (a justification, an approver's
/// reason): at most `max` characters, and none that [`hides_text`]. The error names `field`
/// and the first offending character.
pub fn check_readable(field: &str, text: &str, max: usize) -> Result<(), String> {
    if text.chars().count() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    match text.chars().find(|&c| hides_text(c)) {
        Some(c) => Err(format!(
            "{field} contains the control, format or separator character U+{:04X} \
             (only line feeds and tabs are allowed)",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// Unicode's format characters (category Cf) and the two separators (Zl, Zp).
const FORMAT: &[std::ops::RangeInclusive<char>] = &[
    '\u{00AD}'..='\u{00AD}',
    '\u{0600}'..='\u{0605}',
    '\u{061C}'..='\u{061C}',
    '\u{06DD}'..='\u{06DD}',
    '\u{070F}'..='\u{070F}',
    '\u{0890}'..='\u{0891}',
    '\u{08E2}'..='\u{08E2}',
    '\u{180E}'..='\u{180E}',
    '\u{200B}'..='\u{200F}',
    '\u{2028}'..='\u{202E}',
    '\u{2060}'..='\u{2064}',
    '\u{2066}'..='\u{206F}',
    '\u{FEFF}'..='\u{FEFF}',
    '\u{FFF9}'..='\u{FFFB}',
    '\u{110BD}'..='\u{110BD}',
    '\u{110CD}'..='\u{110CD}',
    '\u{13430}'..='\u{1343F}',
    '\u{1BCA0}'..='\u{1BCA3}',
    '\u{1D173}'..='\u{1D17A}',
    '\u{E0001}'..='\u{E0001}',
    '\u{E0020}'..='\u{E007F}',
];

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
        for hidden in [
            '\u{9b}',
            '\u{7f}',
            '\u{2067}',
            '\u{2028}',
            '\u{200b}',
            '\u{feff}',
            '\u{e0041}',
        ] {
            assert!(hides_text(hidden), "{hidden:?}");
        }
        assert!(!hides_text('\n') && !hides_text('\t') && !hides_text('a'));
    }
}
