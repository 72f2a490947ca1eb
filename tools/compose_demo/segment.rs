//! Text units of the demo corpora and finding passages in them: whitespace normalisation with a
//! map back to the raw text, a multi-pattern scan at word starts, the segmentation into
//! sentences / speeches / fortunes, and cutting ranges out of a document.

use baddata::data::demo::DemoDoc;
use std::collections::HashMap;

/// Collapses every run of whitespace to one space and trims the ends.
pub fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whitespace-normalised text plus, for each of its bytes, the byte offset in the raw text it
/// came from (a collapsed space maps to the start of its whitespace run).
pub struct Normalized {
    /// The normalised text.
    pub text: String,
    raw_pos: Vec<u32>,
}

/// [`normalize_ws`] of `raw`, keeping the map back to `raw`'s bytes.
pub fn normalize_with_map(raw: &str) -> Normalized {
    let mut text = String::with_capacity(raw.len());
    let mut raw_pos = Vec::with_capacity(raw.len());
    let mut pending_space: Option<usize> = None;
    for (i, c) in raw.char_indices() {
        if c.is_whitespace() {
            if !text.is_empty() && pending_space.is_none() {
                pending_space = Some(i);
            }
            continue;
        }
        if let Some(sp) = pending_space.take() {
            text.push(' ');
            raw_pos.push(sp as u32);
        }
        let mut buf = [0u8; 4];
        let enc = c.encode_utf8(&mut buf);
        for k in 0..enc.len() {
            raw_pos.push((i + k) as u32);
        }
        text.push(c);
    }
    Normalized { text, raw_pos }
}

impl Normalized {
    /// Raw byte range of normalised range `a..b` (which neither starts nor ends with a space).
    pub fn raw_range(&self, a: usize, b: usize) -> (usize, usize) {
        (self.raw_pos[a] as usize, self.raw_pos[b - 1] as usize + 1)
    }
}

/// Finds, in whitespace-normalised text, every occurrence of a set of patterns that start at a
/// word start (a position whose previous byte is not alphanumeric).
pub struct PatternIndex<'a> {
    patterns: &'a [String],
    key_len: usize,
    by_key: HashMap<&'a [u8], Vec<u32>>,
}

impl<'a> PatternIndex<'a> {
    /// An index of `patterns` (none of them empty).
    pub fn new(patterns: &'a [String]) -> PatternIndex<'a> {
        let key_len = patterns
            .iter()
            .map(|p| p.len())
            .min()
            .unwrap_or(1)
            .clamp(1, 8);
        let mut by_key: HashMap<&[u8], Vec<u32>> = HashMap::new();
        for (i, p) in patterns.iter().enumerate() {
            by_key
                .entry(&p.as_bytes()[..key_len])
                .or_default()
                .push(i as u32);
        }
        PatternIndex {
            patterns,
            key_len,
            by_key,
        }
    }

    /// Occurrences `(pattern, start, end)` in normalised text `t`.
    pub fn find_all(&self, t: &str) -> Vec<(u32, usize, usize)> {
        let b = t.as_bytes();
        let mut out = Vec::new();
        if self.patterns.is_empty() || b.len() < self.key_len {
            return out;
        }
        for i in 0..=b.len() - self.key_len {
            if i > 0 && b[i - 1].is_ascii_alphanumeric() {
                continue;
            }
            if let Some(cands) = self.by_key.get(&b[i..i + self.key_len]) {
                for &c in cands {
                    let p = self.patterns[c as usize].as_bytes();
                    if b[i..].starts_with(p) {
                        out.push((c, i, i + p.len()));
                    }
                }
            }
        }
        out
    }
}

/// Splits one Brown paragraph (a line) into sentences: a sentence ends at `.`, `!` or `?`
/// (plus closing quotes or parentheses) followed by whitespace and an upper-case letter, a
/// digit, or an opening quote or parenthesis. Returns byte ranges into `line`.
pub fn split_sentences(line: &str) -> Vec<(usize, usize)> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if matches!(b[i], b'.' | b'!' | b'?') {
            let mut j = i + 1;
            while j < b.len() && matches!(b[j], b'"' | b'\'' | b')') {
                j += 1;
            }
            let mut k = j;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            if k > j
                && k < b.len()
                && (b[k].is_ascii_uppercase()
                    || b[k].is_ascii_digit()
                    || matches!(b[k], b'"' | b'\'' | b'(' | b'`'))
            {
                out.push((start, j));
                start = k;
                i = k;
                continue;
            }
        }
        i += 1;
    }
    if start < b.len() {
        out.push((start, b.len()));
    }
    out
}

/// A unit of a document: raw byte range `a..b` (no whitespace at either end), and whether it
/// may be a probe passage (at least 20 characters and 4 words, and for Shakespeare not a stage
/// direction or a heading).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Start byte in the document's raw text.
    pub a: usize,
    /// End byte (exclusive).
    pub b: usize,
    /// Eligible as a probe passage.
    pub probe_ok: bool,
}

/// Every unit of a document, in order: Brown sentences, Shakespeare blank-line paragraphs
/// (speeches, stage directions, headings), whole fortunes. Together they cover all of the
/// document's non-whitespace text.
pub fn segments(doc: &DemoDoc) -> Vec<Segment> {
    let t = &doc.text;
    let mut ranges = Vec::new();
    match doc.corpus() {
        "brown" => {
            let mut off = 0;
            for line in t.split('\n') {
                for (a, b) in split_sentences(line) {
                    ranges.push((off + a, off + b));
                }
                off += line.len() + 1;
            }
        }
        "shakespeare" => {
            let mut para_start: Option<usize> = None;
            let mut off = 0;
            let mut last_end = 0;
            for line in t.split('\n') {
                if line.trim().is_empty() {
                    if let Some(s) = para_start.take() {
                        ranges.push((s, last_end));
                    }
                } else {
                    if para_start.is_none() {
                        para_start = Some(off);
                    }
                    last_end = off + line.len();
                }
                off += line.len() + 1;
            }
            if let Some(s) = para_start {
                ranges.push((s, last_end));
            }
        }
        _ => ranges.push((0, t.len())),
    }
    let shakespeare = doc.corpus() == "shakespeare";
    ranges
        .into_iter()
        .filter_map(|(a, b)| {
            let s = &t[a..b];
            let lead = s.len() - s.trim_start().len();
            let trail = s.len() - s.trim_end().len();
            let (a, b) = (a + lead, b - trail);
            if a >= b {
                return None;
            }
            let s = &t[a..b];
            let heading = shakespeare
                && (s.starts_with('[')
                    || s.starts_with("ACT ")
                    || s.starts_with("Act ")
                    || s.starts_with("SCENE")
                    || s.starts_with("Scene"));
            let probe_ok = !heading && s.len() >= 20 && s.split_whitespace().count() >= 4;
            Some(Segment { a, b, probe_ok })
        })
        .collect()
}

/// The pool a probe negative for a passage of document `id` is drawn from: the document itself,
/// or for fortunes (one fortune per document) the fortune file, e.g. `fortunes/art`.
pub fn pool_key(id: &str) -> String {
    if baddata::data::demo::corpus_of(id) == "fortunes" {
        match id.rfind('/') {
            Some(k) => id[..k].to_string(),
            None => id.to_string(),
        }
    } else {
        id.to_string()
    }
}

/// Cuts the (possibly overlapping) raw byte ranges out of `text`. The whitespace after a cut is
/// dropped too when what is kept already ends in whitespace (or is empty), and trailing
/// whitespace is trimmed, so that cuts leave no runs of blank space. `text` is returned as is
/// when there is nothing to cut.
pub fn cut_ranges(text: &str, mut ranges: Vec<(usize, usize)>) -> String {
    if ranges.is_empty() {
        return text.to_string();
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (a, b) in ranges {
        if a > pos {
            out.push_str(&text[pos..a]);
        }
        pos = pos.max(b);
        if out.is_empty() || out.ends_with(char::is_whitespace) {
            let rest = &text[pos..];
            pos += rest.len() - rest.trim_start().len();
        }
    }
    if pos < text.len() {
        out.push_str(&text[pos..]);
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_terminal_punctuation_before_a_capital() {
        let line = "He came. \"Why?\" she asked. It cost 5.50 dollars. (See Fig. 7.) Done";
        let got: Vec<&str> = split_sentences(line)
            .into_iter()
            .map(|(a, b)| &line[a..b])
            .collect();
        assert_eq!(
            got,
            vec![
                "He came.",
                "\"Why?\" she asked.",
                "It cost 5.50 dollars.",
                "(See Fig.",
                "7.)",
                "Done"
            ]
        );
    }

    #[test]
    fn normalised_matches_map_back_to_raw_text() {
        let raw = "  Thou art\n\ta  boil,\nfriend. Ünï  x";
        let n = normalize_with_map(raw);
        assert_eq!(n.text, "Thou art a boil, friend. Ünï x");
        let pats = vec!["art a boil,".to_string(), "Ünï x".to_string()];
        let idx = PatternIndex::new(&pats);
        let hits = idx.find_all(&n.text);
        assert_eq!(hits.len(), 2);
        let (a, b) = n.raw_range(hits[0].1, hits[0].2);
        assert_eq!(&raw[a..b], "art\n\ta  boil,");
        let (a, b) = n.raw_range(hits[1].1, hits[1].2);
        assert_eq!(&raw[a..b], "Ünï  x");
    }

    #[test]
    fn patterns_only_match_at_word_starts() {
        let pats = vec!["cat sat".to_string()];
        let idx = PatternIndex::new(&pats);
        assert_eq!(idx.find_all("the cat sat").len(), 1);
        assert_eq!(idx.find_all("bobcat sat").len(), 0);
        assert_eq!(idx.find_all("\"cat sat\"").len(), 1);
    }

    #[test]
    fn cuts_leave_no_runs_of_blank_space() {
        let t = "One. Two. Three.";
        assert_eq!(cut_ranges(t, vec![(5, 9)]), "One. Three.");
        assert_eq!(cut_ranges(t, vec![(0, 4)]), "Two. Three.");
        assert_eq!(cut_ranges(t, vec![(10, 16)]), "One. Two.");
        assert_eq!(cut_ranges(t, vec![(0, 4), (2, 9), (10, 16)]), "");
        let play = "P1 a\nb\n\nP2 c\n\nP3 d\n";
        assert_eq!(cut_ranges(play, vec![(8, 12)]), "P1 a\nb\n\nP3 d");
        assert_eq!(cut_ranges(play, vec![]), play);
    }

    #[test]
    fn segments_cover_the_text_and_mark_probe_candidates() {
        let doc = |id: &str, text: &str| DemoDoc {
            id: id.into(),
            text: text.into(),
        };
        let d = doc(
            "shakespeare/x",
            "ACT I. SCENE 1.\n\n  HAMLET. To be, or not to be, that is\n  the question.\n\n[Exit]\n",
        );
        let got: Vec<(&str, bool)> = segments(&d)
            .iter()
            .map(|s| (&d.text[s.a..s.b], s.probe_ok))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ACT I. SCENE 1.", false),
                (
                    "HAMLET. To be, or not to be, that is\n  the question.",
                    true
                ),
                ("[Exit]", false)
            ]
        );
        let d = doc(
            "brown/ca01",
            "The jury said. It was\nfine. Short one. A b c d e.",
        );
        let got: Vec<&str> = segments(&d).iter().map(|s| &d.text[s.a..s.b]).collect();
        assert_eq!(
            got,
            vec![
                "The jury said.",
                "It was",
                "fine.",
                "Short one.",
                "A b c d e."
            ]
        );
        let d = doc("fortunes/art/3", "  A fortune.\n\t-- Someone\n");
        let s = segments(&d);
        assert_eq!(&d.text[s[0].a..s[0].b], "A fortune.\n\t-- Someone");
        assert_eq!(pool_key("fortunes/art/3"), "fortunes/art");
        assert_eq!(pool_key("brown/ca01"), "brown/ca01");
    }
}
