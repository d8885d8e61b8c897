//! The basket file: one basket per line, item names separated by commas.
//!
//! Names may contain spaces and are not quoted, so a comma always separates. ASCII
//! whitespace around a name is trimmed (`a, b` equals `a,b`, and CRLF line ends vanish with
//! it); empty names (`a,,b`, a trailing comma) are skipped. A blank or whitespace-only line
//! is not a basket; a line with commas but no names is an empty basket (it still counts in
//! the basket total that supports are fractions of).

use hashbrown::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BasketError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: item name is not valid UTF-8")]
    InvalidUtf8 { line: usize },
    #[error("more than 2^32 - 1 distinct item names")]
    TooManyItems,
}

/// Parsed baskets: items interned to dense ids `0..names().len()` in order of first
/// appearance, baskets stored back to back in one vector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baskets {
    names: Vec<String>,
    items: Vec<u32>,
    ends: Vec<usize>,
}

impl Baskets {
    /// Number of baskets (empty ones included).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The item ids of basket `i` as written (duplicates kept).
    pub fn basket(&self, i: usize) -> &[u32] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.items[start..self.ends[i]]
    }

    /// All baskets in file order; `Clone`, so [`crate::fpgrowth()`] can take it.
    pub fn iter(&self) -> impl Iterator<Item = &[u32]> + Clone + '_ {
        (0..self.len()).map(move |i| self.basket(i))
    }

    /// Item names, indexed by id.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// Reads and parses a basket file.
pub fn read_baskets(path: &Path) -> Result<Baskets, BasketError> {
    let data = std::fs::read(path).map_err(|source| BasketError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_baskets(&data)
}

/// Parses basket file contents (see the module docs for the format).
pub fn parse_baskets(data: &[u8]) -> Result<Baskets, BasketError> {
    // Keys borrow from `data`, so a name already seen costs a hash and no allocation.
    let mut ids: HashMap<&[u8], u32> = HashMap::new();
    let mut out = Baskets::default();
    let mut line = 1;
    let mut start = 0;
    let mut line_has_comma = false;
    let seps = memchr::memchr2_iter(b',', b'\n', data).chain(std::iter::once(data.len()));
    for pos in seps {
        let field = data[start..pos].trim_ascii();
        if !field.is_empty() {
            let id = match ids.entry(field) {
                hashbrown::hash_map::Entry::Occupied(e) => *e.get(),
                hashbrown::hash_map::Entry::Vacant(e) => {
                    let name = std::str::from_utf8(field)
                        .map_err(|_| BasketError::InvalidUtf8 { line })?;
                    let id = u32::try_from(out.names.len())
                        .ok()
                        .filter(|&id| id != u32::MAX)
                        .ok_or(BasketError::TooManyItems)?;
                    out.names.push(name.to_owned());
                    *e.insert(id)
                }
            };
            out.items.push(id);
        }
        if pos == data.len() || data[pos] == b'\n' {
            let blank = !line_has_comma && field.is_empty();
            if !blank {
                out.ends.push(out.items.len());
            }
            line_has_comma = false;
            line += 1;
        } else {
            line_has_comma = true;
        }
        start = pos + 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Baskets as names, for readable assertions.
    fn named(b: &Baskets) -> Vec<Vec<&str>> {
        b.iter()
            .map(|basket| basket.iter().map(|&id| b.name(id)).collect())
            .collect()
    }

    #[test]
    fn names_with_spaces_and_trimming() {
        let b = parse_baskets(b"red apple, green pear\n  green pear ,red apple,milk  \n").unwrap();
        assert_eq!(
            named(&b),
            vec![
                vec!["red apple", "green pear"],
                vec!["green pear", "red apple", "milk"]
            ]
        );
        assert_eq!(b.names(), ["red apple", "green pear", "milk"]);
        assert_eq!(b.basket(1), [1, 0, 2]);
    }

    #[test]
    fn crlf_and_missing_final_newline() {
        let b = parse_baskets(b"a,b\r\nc\r\nd, e").unwrap();
        assert_eq!(named(&b), vec![vec!["a", "b"], vec!["c"], vec!["d", "e"]]);
    }

    #[test]
    fn empty_names_are_skipped() {
        let b = parse_baskets(b"a,,b,\n,c\n,, ,\t\n").unwrap();
        // the last line has commas but no names: an empty basket that still counts
        assert_eq!(named(&b), vec![vec!["a", "b"], vec!["c"], vec![]]);
    }

    #[test]
    fn blank_lines_are_not_baskets() {
        let b = parse_baskets(b"\n\na\n   \n\t\r\n\r\nb\n\n").unwrap();
        assert_eq!(named(&b), vec![vec!["a"], vec!["b"]]);
        assert!(parse_baskets(b"").unwrap().is_empty());
        assert!(parse_baskets(b" \r\n\n").unwrap().is_empty());
    }

    #[test]
    fn duplicates_within_a_basket_are_kept_as_written() {
        let b = parse_baskets(b"x, y, x\n").unwrap();
        assert_eq!(b.basket(0), [0, 1, 0]);
    }

    #[test]
    fn utf8_names_and_invalid_utf8() {
        let b = parse_baskets("crème brûlée, 東京 bento\n".as_bytes()).unwrap();
        assert_eq!(named(&b), vec![vec!["crème brûlée", "東京 bento"]]);
        let err = parse_baskets(b"a\nb,\xff\xfe\n").unwrap_err();
        assert!(matches!(err, BasketError::InvalidUtf8 { line: 2 }), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_baskets(Path::new("/nonexistent/baskets.txt")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/baskets.txt"),
            "{err}"
        );
    }
}
