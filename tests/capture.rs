//! The streamed capture format: rows written in chunks come back bit for bit (in text order
//! through the id permutation), an unfinished capture never appears under its final name, and
//! truncated or inconsistent files are refused with errors naming the file and the field.

use std::collections::BTreeMap;
use std::path::Path;

use baddata::probe::{Activations, Capture, CaptureShape, CaptureWriter, HeadRows};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn shape() -> CaptureShape {
    CaptureShape {
        hook: "blocks.{l}.attn.hook_z".into(),
        position: "last token".into(),
        n_layers: 2,
        n_heads: 3,
        d_head: 4,
    }
}

/// `n` rows of arbitrary bit patterns (NaNs, infinities, subnormals, −0 included), a random
/// permutation of text ids and labels: the in-memory capture `[n, L, H, dh]` in text order.
fn random_capture(n: usize, seed: u64) -> (Activations, Vec<usize>, Vec<u8>) {
    let s = shape();
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut data: Vec<f32> = (0..n * s.row_len())
        .map(|_| f32::from_bits(r.random::<u32>()))
        .collect();
    data[0] = -0.0;
    data[1] = f32::from_bits(1);
    let mut ids: Vec<usize> = (0..n).collect();
    ids.shuffle(&mut r);
    let labels = (0..n).map(|_| r.random_range(0..2u8)).collect();
    (
        Activations::from_vec(n, s.n_layers, s.n_heads, s.d_head, data).unwrap(),
        ids,
        labels,
    )
}

/// Writes `acts` in the file order `ids` with chunks of `chunk` rows.
fn write(path: &Path, acts: &Activations, ids: &[usize], labels: &[u8], chunk: usize) {
    let len = shape().row_len();
    let mut w = CaptureWriter::create(path, shape(), chunk).unwrap();
    for &i in ids {
        w.push(i, &acts.data[i * len..(i + 1) * len]).unwrap();
    }
    let meta = BTreeMap::from([("data".to_string(), "random".to_string())]);
    w.finish(Some(labels), &meta).unwrap();
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn chunks_of_three_round_trip_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let n = 10; // not a multiple of 3: the last chunk is partial
    let (acts, ids, labels) = random_capture(n, 1);
    let path = dir.path().join("a.capture");
    let len = shape().row_len();

    // While writing: nothing under the final name; full chunks already on disk.
    let partial = dir.path().join("a.capture.partial");
    let mut w = CaptureWriter::create(&path, shape(), 3).unwrap();
    for &i in &ids[..7] {
        w.push(i, &acts.data[i * len..(i + 1) * len]).unwrap();
    }
    assert!(
        !path.exists(),
        "an unfinished capture must not have its final name"
    );
    assert_eq!(
        std::fs::metadata(&partial).unwrap().len(),
        (6 * len * 4) as u64,
        "two chunks of 3 rows written, the 7th row still buffered"
    );
    let err = w.push(0, &acts.data[..len - 1]).unwrap_err().to_string();
    assert!(err.contains("a row of 23 values, expected"), "{err}");
    drop(w);
    assert!(
        !partial.exists() && !path.exists(),
        "a dropped writer leaves no file"
    );

    write(&path, &acts, &ids, &labels, 3);
    assert!(!partial.exists());
    let cap = Capture::open(&path).unwrap();
    assert_eq!(
        (cap.n(), cap.layers(), cap.heads(), cap.d_head()),
        (n, 2, 3, 4)
    );
    assert_eq!(cap.shape(), shape());
    assert_eq!(cap.header().ids, ids);
    assert_eq!(cap.header().dtype, "f32");
    assert_eq!(cap.header().meta["data"], "random");
    assert_eq!(cap.labels().unwrap(), &labels[..]);
    for (r, &i) in ids.iter().enumerate() {
        assert_eq!(
            bits(cap.file_row(r)),
            bits(&acts.data[i * len..(i + 1) * len]),
            "file row {r}"
        );
    }
    for i in 0..n {
        for l in 0..2 {
            for h in 0..3 {
                assert_eq!(
                    bits(cap.row(i, l, h)),
                    bits(acts.row(i, l, h)),
                    "{i} {l} {h}"
                );
            }
        }
        let f: Vec<u64> = cap
            .head_features(1, 2)
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let g: Vec<u64> = acts
            .head_features(1, 2)
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(f, g);
    }

    // The chunk size changes nothing in the file.
    for chunk in [1, 4, 100] {
        let other = dir.path().join(format!("c{chunk}.capture"));
        write(&other, &acts, &ids, &labels, chunk);
        assert!(
            std::fs::read(&other).unwrap() == std::fs::read(&path).unwrap(),
            "chunks of {chunk} rows give another file"
        );
    }
}

#[test]
fn ids_must_be_a_permutation() {
    let dir = tempfile::tempdir().unwrap();
    let (acts, mut ids, labels) = random_capture(5, 2);
    ids[1] = ids[0];
    let len = shape().row_len();
    let path = dir.path().join("dup.capture");
    let mut w = CaptureWriter::create(&path, shape(), 3).unwrap();
    for &i in &ids {
        w.push(i, &acts.data[i * len..(i + 1) * len]).unwrap();
    }
    let err = w
        .finish(Some(&labels), &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dup.capture") && err.contains("field ids") && err.contains("twice"),
        "{err}"
    );
    assert!(!path.exists() && !dir.path().join("dup.capture.partial").exists());
}

/// The trailer of a finished file: (rows, JSON header).
fn split(bytes: &[u8]) -> (Vec<u8>, serde_json::Value) {
    let end = bytes.len() - 16;
    let json_len = u64::from_le_bytes(bytes[end..end + 8].try_into().unwrap()) as usize;
    let rows = bytes[..end - json_len].to_vec();
    (
        rows,
        serde_json::from_slice(&bytes[end - json_len..end]).unwrap(),
    )
}

fn join(rows: &[u8], header: &serde_json::Value) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap();
    let mut out = rows.to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(b"BDCAPT01");
    out
}

fn open_err(path: &Path) -> String {
    match Capture::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (acts, ids, labels) = random_capture(7, 3);
    let path = dir.path().join("whole.capture");
    write(&path, &acts, &ids, &labels, 3);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.capture");
    for keep in [
        0,
        10,
        15,
        16,
        200,
        bytes.len() / 2,
        bytes.len() - 8,
        bytes.len() - 1,
    ] {
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let err = open_err(&cut);
        assert!(
            err.contains("cut.capture") && err.contains("truncated"),
            "cut to {keep} bytes: {err}"
        );
        if keep >= 16 {
            assert!(err.contains("magic"), "cut to {keep} bytes: {err}");
        }
    }
    // A whole trailer whose json_len points before the start of the file.
    let mut bad = bytes.clone();
    let end = bad.len() - 16;
    bad[end..end + 8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    std::fs::write(&cut, &bad).unwrap();
    let err = open_err(&cut);
    assert!(
        err.contains("json_len") && err.contains("truncated"),
        "{err}"
    );
    assert!(Capture::open(&dir.path().join("none.capture")).is_err());
}

#[test]
fn headers_that_disagree_with_the_data_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (acts, ids, labels) = random_capture(7, 4);
    let path = dir.path().join("good.capture");
    write(&path, &acts, &ids, &labels, 3);
    let (rows, header) = split(&std::fs::read(&path).unwrap());
    assert_eq!(rows.len(), 7 * 24 * 4);
    let bad = dir.path().join("bad.capture");
    let check = |rows: &[u8], edit: &dyn Fn(&mut serde_json::Value), words: &[&str]| {
        let mut h = header.clone();
        edit(&mut h);
        std::fs::write(&bad, join(rows, &h)).unwrap();
        let err = open_err(&bad);
        for w in words {
            assert!(
                err.contains("bad.capture") && err.contains(w),
                "{words:?}: {err}"
            );
        }
    };
    // Rebuilding the file unchanged opens: the edits below are what is refused.
    std::fs::write(&bad, join(&rows, &header)).unwrap();
    Capture::open(&bad).unwrap();

    check(
        &rows,
        &|h| h["n_rows"] = 8.into(),
        &["n_rows = 8", "disagrees", "672 bytes"],
    );
    check(
        &rows,
        &|h| h["n_rows"] = 6.into(),
        &["n_rows = 6", "disagrees"],
    );
    check(
        &rows[..rows.len() - 4],
        &|_| {},
        &["n_rows = 7", "disagrees", "668 bytes"],
    );
    check(
        &rows,
        &|h| h["d_head"] = 5.into(),
        &["n_rows = 7", "disagrees"],
    );
    check(
        &rows,
        &|h| h["dtype"] = "bf16".into(),
        &["field dtype", "bf16"],
    );
    check(&rows, &|h| h["n_heads"] = 0.into(), &["field n_heads is 0"]);
    check(
        &rows,
        &|h| h["ids"].as_array_mut().unwrap().truncate(6),
        &["field ids has 6 entries"],
    );
    check(
        &rows,
        &|h| h["ids"][0] = 9.into(),
        &["field ids", "outside 0..7"],
    );
    check(
        &rows,
        &|h| h["labels"].as_array_mut().unwrap().push(1.into()),
        &["field labels has 8 entries"],
    );
    check(
        &rows,
        &|h| h["format"] = "other".into(),
        &["format/version"],
    );
    check(
        &rows,
        &|h| h["hook"] = 3.into(),
        &["JSON header does not parse"],
    );
}
