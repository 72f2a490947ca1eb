//! Document readers: turn input files into a stream of documents (`String`s).
//!
//! Formats ([`Format`]):
//! - `text`: a plain UTF-8 text file is **one document** (a book, an article). Split your corpus
//!   into one file per document if it is otherwise.
//! - `jsonl`: one JSON object per line with a string field `"text"`, the C4 shape
//!   `{"text", "timestamp", "url"}`; other fields are ignored, blank lines skipped.
//! - `pol`: the 4chan /pol/ dump of "Raiders of the Lost Kek" (Papasavva et al. 2020): one thread
//!   per line, `{"posts": [{"no", "com", ...}, ...]}`. A thread is one document: the text of its
//!   posts (HTML comment `com` with tags stripped, entities unescaped and `>>123` quote links
//!   dropped; posts without text skipped) joined by newlines.
//!
//! Any file may be gzip-compressed (detected from its first two bytes, `1f 8b`). `auto` picks the
//! format from the name: `*.jsonl[.gz]`/`*.json[.gz]` → jsonl, `*.ndjson[.gz]` → pol, anything
//! else → text. Every error names the file, and for line formats the line number.

use anyhow::{bail, Context, Result};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The input formats `prepare` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Pick from the file name (.jsonl or .json → jsonl, .ndjson → pol, else text).
    Auto,
    /// A plain text file is one document.
    Text,
    /// One JSON object per line with a "text" field (C4).
    Jsonl,
    /// 4chan /pol/ ndjson: one thread per line, {"posts": [{"com": html}, ...]}.
    Pol,
}

impl Format {
    /// The concrete format for `path`: `self` unless it is `Auto`, else guessed from the name.
    pub fn resolve(self, path: &Path) -> Format {
        if self != Format::Auto {
            return self;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".ndjson") {
            Format::Pol
        } else if name.ends_with(".jsonl") || name.ends_with(".json") {
            Format::Jsonl
        } else {
            Format::Text
        }
    }
}

/// Opens `path` for reading, transparently decompressing gzip (detected by its magic bytes).
pub fn open_maybe_gz(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n =
        read_up_to(&mut f, &mut magic).with_context(|| format!("reading {}", path.display()))?;
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            MultiGzDecoder::new(BufReader::new(f)),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads a whole (possibly gzipped) file as UTF-8 text.
pub fn read_to_string_maybe_gz(path: &Path) -> Result<String> {
    let mut s = String::new();
    open_maybe_gz(path)?
        .read_to_string(&mut s)
        .with_context(|| format!("reading {} as UTF-8 text", path.display()))?;
    Ok(s)
}

/// A stream of documents from one file; yields `Err` (naming file and line) and then stops.
pub struct Documents {
    path: PathBuf,
    format: Format,
    lines: Option<std::io::Lines<Box<dyn BufRead + Send>>>,
    whole: Option<String>,
    line_no: usize,
    done: bool,
}

/// Opens `path` as a stream of documents in `format` (`Auto` is resolved from the name).
pub fn documents(path: &Path, format: Format) -> Result<Documents> {
    let format = format.resolve(path);
    let mut d = Documents {
        path: path.to_path_buf(),
        format,
        lines: None,
        whole: None,
        line_no: 0,
        done: false,
    };
    match format {
        Format::Text => d.whole = Some(read_to_string_maybe_gz(path)?),
        _ => d.lines = Some(open_maybe_gz(path)?.lines()),
    }
    Ok(d)
}

/// Reads every document of `path` in `format` into memory.
pub fn read_documents(path: &Path, format: Format) -> Result<Vec<String>> {
    documents(path, format)?.collect()
}

impl Iterator for Documents {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        if self.done {
            return None;
        }
        if self.format == Format::Text {
            self.done = true;
            return self.whole.take().map(Ok);
        }
        let lines = self.lines.as_mut()?;
        loop {
            let line = match lines.next() {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(anyhow::Error::new(e).context(format!(
                        "{}:{}: reading the line",
                        self.path.display(),
                        self.line_no + 1
                    ))));
                }
                Some(Ok(l)) => l,
            };
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            let parsed = match self.format {
                Format::Pol => parse_pol_line(&line),
                _ => parse_jsonl_line(&line),
            };
            return Some(parsed.map_err(|e| {
                self.done = true;
                e.context(format!("{}:{}", self.path.display(), self.line_no))
            }));
        }
    }
}

/// The `"text"` field of one JSONL line (C4 shape).
pub fn parse_jsonl_line(line: &str) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(line).context("not valid JSON (expected one object per line)")?;
    match v.get("text") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!("field \"text\" is {other}, expected a string"),
        None => bail!("no field \"text\" (expected an object like {{\"text\": \"...\"}})"),
    }
}

/// One /pol/ thread line → its document: cleaned post texts joined by `\n`.
pub fn parse_pol_line(line: &str) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(line).context("not valid JSON (expected one thread per line)")?;
    let posts = match v.get("posts") {
        Some(serde_json::Value::Array(p)) => p,
        Some(other) => bail!("field \"posts\" is {other}, expected an array of posts"),
        None => bail!("no field \"posts\" (expected {{\"posts\": [{{\"no\", \"com\", ...}}]}})"),
    };
    let mut out = Vec::with_capacity(posts.len());
    for (i, post) in posts.iter().enumerate() {
        match post.get("com") {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(html)) => {
                let text = strip_html(html);
                let text = text.trim();
                if !text.is_empty() {
                    out.push(text.to_string());
                }
            }
            Some(other) => bail!("posts[{i}].com is {other}, expected an HTML string"),
        }
    }
    Ok(out.join("\n"))
}

/// Converts a 4chan comment's HTML to text: `<br>` becomes a newline, `<wbr>` nothing, quote
/// links (`<a class="quotelink">>>123</a>`) and dead links (`<span class="deadlink">`) are
/// dropped with their content, other tags are removed keeping their content, and entities
/// (`&gt;`, `&#039;`, `&#x27;`, ...) are unescaped.
pub fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    // When inside a dropped element: its tag name and nesting depth of that name.
    let mut skipping: Option<(String, usize)> = None;
    while let Some(lt) = rest.find('<') {
        if skipping.is_none() {
            out.push_str(&unescape_entities(&rest[..lt]));
        }
        let Some(gt) = rest[lt..].find('>') else {
            // A stray '<' with no closing '>': keep it as text.
            if skipping.is_none() {
                out.push_str(&unescape_entities(&rest[lt..]));
            }
            rest = "";
            break;
        };
        let tag = &rest[lt + 1..lt + gt];
        rest = &rest[lt + gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if let Some((sname, depth)) = skipping.as_mut() {
            if *sname == name {
                if closing {
                    *depth -= 1;
                    if *depth == 0 {
                        skipping = None;
                    }
                } else {
                    *depth += 1;
                }
            }
            continue;
        }
        if closing {
            continue;
        }
        let lower = tag.to_ascii_lowercase();
        if lower.contains("quotelink") || lower.contains("deadlink") {
            if !tag.ends_with('/') {
                skipping = Some((name, 1));
            }
            continue;
        }
        if name == "br" || name == "p" {
            out.push('\n');
        }
    }
    if skipping.is_none() {
        out.push_str(&unescape_entities(rest));
    }
    out
}

/// Unescapes HTML character references: the named ones 4chan emits (`&amp; &lt; &gt; &quot;
/// &apos; &nbsp;`) and numeric ones (`&#39;`, `&#x27;`). Unknown references are kept as written.
pub fn unescape_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let semi = rest[..rest.len().min(12)].find(';');
        let decoded = semi.and_then(|semi| {
            let body = &rest[1..semi];
            let ch = match body {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let num = body.strip_prefix('#')?;
                    let code = if let Some(hex) =
                        num.strip_prefix('x').or_else(|| num.strip_prefix('X'))
                    {
                        u32::from_str_radix(hex, 16).ok()?
                    } else {
                        num.parse::<u32>().ok()?
                    };
                    char::from_u32(code)
                }
            }?;
            Some((ch, semi + 1))
        });
        match decoded {
            Some((ch, used)) => {
                out.push(ch);
                rest = &rest[used..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
