//! Names in messages for people: one line each, whatever bytes a name holds.
//!
//! File names are arbitrary bytes. In a message (standard error, a problem's text) a
//! name is escaped so that it stays on its line and shows what it is: a backslash is
//! doubled, control characters become `\n`, `\t`, `\r` or `\xNN`, and bytes that are
//! not UTF-8 become `\xNN`. Machine output carries names exactly: `--json` gives each
//! problem's path percent-encoded as in the metafile (docs/FORMAT.md section 4.5).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `bytes` as text for a message line (see the module documentation).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02X}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// A path for a message line.
pub fn path(p: &Path) -> String {
    escape(p.as_os_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_on_their_line_and_show_their_bytes() {
        assert_eq!(escape(b"plain name.txt"), "plain name.txt");
        assert_eq!(escape(b"two\nlines"), "two\\nlines");
        assert_eq!(escape(b"bad\xff\xfe"), "bad\\xFF\\xFE");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape("ünï".as_bytes()), "ünï");
        assert_eq!(escape(b"\x1b[31m"), "\\x1B[31m");
        assert!(!escape(b"a\nb\rc\x00").contains(['\n', '\r', '\0']));
    }
}
