//! scikit-learn's word analyzer, as `TfidfVectorizer(analyzer="word")` runs it on one document.
//!
//! Steps, in scikit-learn's order (`build_analyzer` → `_word_ngrams`):
//! 1. lowercase the whole text (Python's `str.lower()`: full Unicode case mapping, final sigma);
//! 2. find the tokens with the default token pattern `(?u)\b\w\w+\b` as Python's `re` reads it;
//! 3. drop the stop words (after tokenizing, compared with the lowercased tokens);
//! 4. with an n-gram range other than (1, 1), add the word n-grams of the remaining tokens,
//!    their words joined by one space.
//!
//! Python's `\w` on `str` is `ch.isalnum() or ch == "_"`, and `isalnum` is true for the letter
//! categories (Lu Ll Lt Lm Lo) and the number categories (Nd Nl No, plus numeric ideographs,
//! which are Lo anyway). Unlike the `regex` crate's `\w` it does not take combining marks (Mn Mc
//! Me) or other connector punctuation, so the class is written out as `[\p{L}\p{N}_]`.
//! `\b\w\w+\b` then matches exactly the maximal runs of such characters that are at least two
//! characters (code points) long, which is what `[\p{L}\p{N}_]{2,}` finds leftmost-first.
//! Checked code point by code point against CPython 3.11's `re` (Unicode 14): the two classes
//! agree on every character assigned in Unicode 14; they differ only on characters assigned since
//! (which this class, on the `regex` crate's newer tables, counts as letters or digits).

use std::collections::HashSet;
use std::sync::OnceLock;

use regex::Regex;

/// The only token pattern this port implements: scikit-learn's default.
pub const SKLEARN_TOKEN_PATTERN: &str = r"(?u)\b\w\w+\b";

/// `SKLEARN_TOKEN_PATTERN` restated for the `regex` crate with Python's meaning of `\w`.
fn token_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"[\p{L}\p{N}_]{2,}").expect("constant pattern compiles"))
}

/// Word analyzer settings read from the scorer's weights file.
#[derive(Clone, Debug)]
pub struct Analyzer {
    /// Lowercase the text before tokenizing.
    pub lowercase: bool,
    /// Tokens removed after tokenizing.
    pub stop_words: HashSet<String>,
    /// Inclusive n-gram range (min_n, max_n), 1 ≤ min_n ≤ max_n.
    pub ngram_range: (usize, usize),
}

impl Analyzer {
    /// The terms of `text` in scikit-learn's order: unigrams (when min_n is 1), then bigrams,
    /// and so on; each term passed to `emit`. Never allocates per unigram.
    pub fn for_each_term(&self, text: &str, mut emit: impl FnMut(&str)) {
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let tokens = token_regex()
            .find_iter(text)
            .map(|m| m.as_str())
            .filter(|t| !self.stop_words.contains(*t));
        let (min_n, max_n) = self.ngram_range;
        if max_n == 1 {
            tokens.for_each(emit);
            return;
        }
        let tokens: Vec<&str> = tokens.collect();
        let mut joined = String::new();
        for n in min_n..=max_n.min(tokens.len()) {
            for window in tokens.windows(n) {
                if n == 1 {
                    emit(window[0]);
                } else {
                    joined.clear();
                    for (i, w) in window.iter().enumerate() {
                        if i > 0 {
                            joined.push(' ');
                        }
                        joined.push_str(w);
                    }
                    emit(&joined);
                }
            }
        }
    }

    /// The terms of `text` as owned strings (see [`Analyzer::for_each_term`]).
    pub fn terms(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.for_each_term(text, |t| out.push(t.to_string()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyzer(stop: &[&str], ngram_range: (usize, usize)) -> Analyzer {
        Analyzer {
            lowercase: true,
            stop_words: stop.iter().map(|s| s.to_string()).collect(),
            ngram_range,
        }
    }

    #[test]
    fn tokens_follow_python_word_chars() {
        let a = analyzer(&[], (1, 1));
        // One-character runs are dropped; apostrophes and hyphens split; digits and `_` count.
        assert_eq!(
            a.terms("I don't care, X-ray snake_case 42 7 ÉCOLE"),
            ["don", "care", "ray", "snake_case", "42", "école"]
        );
        // A combining mark is not a word character for Python: "e\u{301}té" splits after "e".
        assert_eq!(a.terms("e\u{301}te\u{301}s"), ["te"]);
        // Superscript two (No) is numeric for Python.
        assert_eq!(a.terms("x²"), ["x²"]);
        assert!(a.terms("").is_empty());
    }

    #[test]
    fn stop_words_go_before_ngrams() {
        let a = analyzer(&["the", "of"], (1, 2));
        assert_eq!(
            a.terms("The piece of shit"),
            ["piece", "shit", "piece shit"]
        );
        let b = analyzer(&["the"], (2, 3));
        assert_eq!(b.terms("a b the cc dd ee"), ["cc dd", "dd ee", "cc dd ee"]);
    }
}
