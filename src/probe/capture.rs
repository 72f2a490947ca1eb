//! Activation captures on disk: rows streamed out in fixed-size chunks while texts run, the
//! shape and labels in a JSON header written last, read back through a memory map.
//!
//! ```text
//! byte offset                 content
//! 0                           rows: n_rows × row_len f32, little-endian, row-major
//!                             [n_rows, n_layers, n_heads, d_head], in the order captured
//! n_rows·row_len·4            JSON header (CaptureHeader): hook, position, n_layers, n_heads,
//!                             d_head, dtype "f32", n_rows, ids, labels, meta
//! end − 16                    json_len: u64 little-endian, bytes of the JSON header
//! end − 8                     magic "BDCAPT01"
//! ```
//! `row_len = n_layers·n_heads·d_head`. Row `r` of the file holds text `ids[r]`; `ids` is a
//! permutation of `0..n_rows`, and [`Capture`] presents the rows in text order (`labels[i]` is
//! text `i`'s label). The rows start at byte 0, so the map is 4-byte aligned and rows are read in
//! place as `&[f32]`.
//!
//! Crash safety: [`CaptureWriter`] appends to `<path>.partial`, and only [`CaptureWriter::finish`]
//! writes the header and trailer, syncs and renames it to `<path>`. A file at `<path>` is
//! therefore complete; a cut copy loses its trailer and is refused by [`Capture::open`]. A writer
//! dropped unfinished deletes its `.partial` file.
//!
//! Memory: the writer holds one chunk (`chunk_rows · row_len · 4` bytes) plus 8 bytes per row
//! for the ids (and the caller's labels); the reader maps the file and holds the header plus `8·n_rows`
//! bytes of index.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::activations::HeadRows;
use crate::config::ModelConfig;

/// Last 8 bytes of every finished capture file.
pub const MAGIC: &[u8; 8] = b"BDCAPT01";
/// Bytes after the JSON header: `json_len` (u64 LE) then [`MAGIC`].
pub const TRAILER_BYTES: usize = 16;
/// The `format` field of the header.
pub const FORMAT: &str = "baddata-capture";
/// Chunk size the `probe` command writes with: rows per chunk are `DEFAULT_CHUNK_BYTES /
/// (4·row_len)`, at least one.
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;

/// Rows per chunk so that a chunk of rows of `row_len` f32 stays within `bytes` (at least 1).
pub fn chunk_rows_for(bytes: usize, row_len: usize) -> usize {
    (bytes / (4 * row_len.max(1))).max(1)
}

/// What one captured row holds: `n_layers × n_heads × d_head` values of hook `hook` (a name
/// with `{l}` for the layer) at position `position`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureShape {
    /// Hook name template, e.g. `blocks.{l}.attn.hook_z`.
    pub hook: String,
    /// Which position of each text, e.g. `last token`.
    pub position: String,
    /// Layers captured: `0..n_layers`.
    pub n_layers: usize,
    /// Heads per layer.
    pub n_heads: usize,
    /// Values per head.
    pub d_head: usize,
}

impl CaptureShape {
    /// The probes' capture of model `cfg`: last-token `blocks.{l}.attn.hook_z` of every layer.
    pub fn hook_z_last(cfg: &ModelConfig) -> Self {
        CaptureShape {
            hook: "blocks.{l}.attn.hook_z".into(),
            position: "last token".into(),
            n_layers: cfg.n_layers,
            n_heads: cfg.n_heads,
            d_head: cfg.d_head(),
        }
    }

    /// f32 values per row: `n_layers·n_heads·d_head`.
    pub fn row_len(&self) -> usize {
        self.n_layers * self.n_heads * self.d_head
    }
}

/// The JSON header of a capture file (see the module docs for the layout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptureHeader {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version, 1.
    pub version: u32,
    /// Hook name template, e.g. `blocks.{l}.attn.hook_z`.
    pub hook: String,
    /// Position captured in each text.
    pub position: String,
    /// Layers per row.
    pub n_layers: usize,
    /// Heads per layer.
    pub n_heads: usize,
    /// Values per head.
    pub d_head: usize,
    /// Element type of the rows: `f32` (little-endian).
    pub dtype: String,
    /// Shape of the row block, in words.
    pub layout: String,
    /// Rows in the file.
    pub n_rows: usize,
    /// `ids[r]`: the text held by file row `r` (a permutation of `0..n_rows`).
    pub ids: Vec<usize>,
    /// `labels[i]`: the label of text `i`, if the capture has labels.
    pub labels: Option<Vec<u8>>,
    /// Free-form provenance (checkpoint, weights hash, data set...).
    pub meta: BTreeMap<String, String>,
}

impl CaptureHeader {
    fn shape(&self) -> CaptureShape {
        CaptureShape {
            hook: self.hook.clone(),
            position: self.position.clone(),
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            d_head: self.d_head,
        }
    }
}

/// Writes a capture row by row, appending full chunks of rows to `<path>.partial` as they fill
/// (module docs).
pub struct CaptureWriter {
    path: PathBuf,
    partial: PathBuf,
    file: File,
    shape: CaptureShape,
    chunk_rows: usize,
    /// Rows not yet written, at most `chunk_rows` of them.
    buf: Vec<f32>,
    ids: Vec<usize>,
    finished: bool,
}

/// `<path>.partial`.
fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

impl CaptureWriter {
    /// Starts a capture of rows of `shape` to be finished at `path`, writing `chunk_rows` rows
    /// at a time (at least 1). Creates `<path>.partial` (and `path`'s directory).
    pub fn create(path: &Path, shape: CaptureShape, chunk_rows: usize) -> Result<Self> {
        ensure!(
            cfg!(target_endian = "little"),
            "capture files are little-endian f32; this machine is big-endian"
        );
        ensure!(
            shape.row_len() > 0,
            "capture {}: empty rows ({} layers × {} heads × {} values)",
            path.display(),
            shape.n_layers,
            shape.n_heads,
            shape.d_head
        );
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .with_context(|| format!("creating the directory {}", dir.display()))?;
        }
        let partial = partial_path(path);
        let file = File::create(&partial)
            .with_context(|| format!("creating the capture file {}", partial.display()))?;
        let chunk_rows = chunk_rows.max(1);
        Ok(CaptureWriter {
            path: path.to_path_buf(),
            partial,
            file,
            buf: Vec::with_capacity(chunk_rows * shape.row_len()),
            shape,
            chunk_rows,
            ids: Vec::new(),
            finished: false,
        })
    }

    /// The shape of every row.
    pub fn shape(&self) -> &CaptureShape {
        &self.shape
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Rows per chunk.
    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows
    }

    /// Appends the row of text `id` (`row_len` values, `[n_layers, n_heads, d_head]`); a full
    /// chunk goes to disk.
    pub fn push(&mut self, id: usize, row: &[f32]) -> Result<()> {
        ensure!(
            row.len() == self.shape.row_len(),
            "capture {}: a row of {} values, expected n_layers·n_heads·d_head = {}",
            self.path.display(),
            row.len(),
            self.shape.row_len()
        );
        self.buf.extend_from_slice(row);
        self.ids.push(id);
        if self.buf.len() >= self.chunk_rows * self.shape.row_len() {
            self.write_chunk()?;
        }
        Ok(())
    }

    fn write_chunk(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.file
                .write_all(bytemuck::cast_slice(&self.buf))
                .with_context(|| format!("writing rows to {}", self.partial.display()))?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes the last rows, the JSON header and the trailer, syncs, and renames the file to its
    /// final path. `labels`, if given, are per text id (`n_rows` of them). Returns the header.
    /// The ids pushed must be a permutation of `0..n_rows`.
    pub fn finish(
        mut self,
        labels: Option<&[u8]>,
        meta: &BTreeMap<String, String>,
    ) -> Result<CaptureHeader> {
        let n = self.ids.len();
        let what = self.path.display().to_string();
        check_ids(&self.ids, &what)?;
        if let Some(l) = labels {
            ensure!(
                l.len() == n,
                "capture {what}: {} labels for {n} rows",
                l.len()
            );
        }
        self.write_chunk()?;
        let header = CaptureHeader {
            format: FORMAT.into(),
            version: 1,
            hook: self.shape.hook.clone(),
            position: self.shape.position.clone(),
            n_layers: self.shape.n_layers,
            n_heads: self.shape.n_heads,
            d_head: self.shape.d_head,
            dtype: "f32".into(),
            layout: "[n_rows, n_layers, n_heads, d_head]".into(),
            n_rows: n,
            ids: std::mem::take(&mut self.ids),
            labels: labels.map(|l| l.to_vec()),
            meta: meta.clone(),
        };
        let json = serde_json::to_vec(&header)?;
        let mut tail = json;
        tail.extend_from_slice(&(tail.len() as u64).to_le_bytes());
        tail.extend_from_slice(MAGIC);
        let p = self.partial.display().to_string();
        self.file
            .write_all(&tail)
            .with_context(|| format!("writing the header of {p}"))?;
        self.file
            .sync_all()
            .with_context(|| format!("syncing {p}"))?;
        fs::rename(&self.partial, &self.path).with_context(|| format!("renaming {p} to {what}"))?;
        self.finished = true;
        Ok(header)
    }
}

impl Drop for CaptureWriter {
    /// An unfinished capture is deleted, so no partial data outlives the writer.
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

/// `ids` must be a permutation of `0..ids.len()`.
fn check_ids(ids: &[usize], what: &str) -> Result<()> {
    let n = ids.len();
    let mut seen = vec![false; n];
    for (r, &id) in ids.iter().enumerate() {
        ensure!(
            id < n,
            "capture {what}: field ids: row {r} holds text {id}, outside 0..{n}"
        );
        ensure!(
            !seen[id],
            "capture {what}: field ids: text {id} appears twice (again at row {r})"
        );
        seen[id] = true;
    }
    Ok(())
}

/// A finished capture file, memory-mapped: rows are read in place, never loaded as a whole.
pub struct Capture {
    path: PathBuf,
    header: CaptureHeader,
    map: Mmap,
    /// f32 values per row.
    row_len: usize,
    /// `row_of_id[i]`: the file row holding text `i`.
    row_of_id: Vec<usize>,
}

impl Capture {
    /// Opens and checks a capture: its trailer, its header, and that the rows fill exactly the
    /// bytes before the header. Errors name the file and the field that is wrong.
    pub fn open(path: &Path) -> Result<Capture> {
        let what = path.display().to_string();
        let file = File::open(path).with_context(|| format!("opening the capture {what}"))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading the size of {what}"))?
            .len();
        ensure!(
            len >= TRAILER_BYTES as u64,
            "{what}: {len} bytes, shorter than the {TRAILER_BYTES}-byte trailer: the capture is \
             truncated or not a capture file"
        );
        let mut r = BufReader::new(&file);
        let mut trailer = [0u8; TRAILER_BYTES];
        r.seek(SeekFrom::End(-(TRAILER_BYTES as i64)))?;
        r.read_exact(&mut trailer)
            .with_context(|| format!("reading the trailer of {what}"))?;
        ensure!(
            &trailer[8..] == MAGIC,
            "{what}: trailer field magic is not \"BDCAPT01\": the capture is truncated, \
             unfinished or not a capture file"
        );
        let json_len = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
        let before = len - TRAILER_BYTES as u64;
        ensure!(
            json_len <= before,
            "{what}: trailer field json_len = {json_len} is more than the {before} bytes before \
             the trailer: the capture is truncated or corrupt"
        );
        let data_bytes = before - json_len;
        let mut json = vec![0u8; json_len as usize];
        r.seek(SeekFrom::Start(data_bytes))?;
        r.read_exact(&mut json)
            .with_context(|| format!("reading the header of {what}"))?;
        let header: CaptureHeader = serde_json::from_slice(&json)
            .with_context(|| format!("{what}: the JSON header does not parse"))?;
        check_header(&header, data_bytes, &what)?;
        // SAFETY: the map is read-only and lives as long as `Capture`; finished captures are
        // never written again (writers only create new files and rename them into place).
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {what}"))?;
        let n = header.n_rows;
        let mut row_of_id = vec![0; n];
        for (row, &id) in header.ids.iter().enumerate() {
            row_of_id[id] = row;
        }
        let c = Capture {
            path: path.to_path_buf(),
            row_len: header.shape().row_len(),
            header,
            map,
            row_of_id,
        };
        // Mapped memory is page-aligned and the rows start at byte 0.
        bytemuck::try_cast_slice::<u8, f32>(&c.map[..data_bytes as usize])
            .map_err(|e| anyhow::anyhow!("{what}: rows cannot be read as f32: {e:?}"))?;
        Ok(c)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The JSON header.
    pub fn header(&self) -> &CaptureHeader {
        &self.header
    }

    /// What each row holds.
    pub fn shape(&self) -> CaptureShape {
        self.header.shape()
    }

    /// Labels per text id, if the capture has them.
    pub fn labels(&self) -> Option<&[u8]> {
        self.header.labels.as_deref()
    }

    /// All rows in file order, `[n_rows, n_layers, n_heads, d_head]` (mapped, not copied).
    pub fn data(&self) -> &[f32] {
        bytemuck::cast_slice(&self.map[..4 * self.header.n_rows * self.row_len])
    }

    /// Row `r` of the file (text `ids[r]`).
    pub fn file_row(&self, r: usize) -> &[f32] {
        let len = self.row_len;
        &self.data()[r * len..(r + 1) * len]
    }
}

/// Checks a parsed header against itself and the `data_bytes` before it.
fn check_header(h: &CaptureHeader, data_bytes: u64, what: &str) -> Result<()> {
    ensure!(
        h.format == FORMAT && h.version == 1,
        "{what}: header fields format/version are {:?}/{}, expected {FORMAT:?}/1",
        h.format,
        h.version
    );
    ensure!(
        h.dtype == "f32",
        "{what}: header field dtype is {:?}, expected \"f32\"",
        h.dtype
    );
    for (field, v) in [
        ("n_layers", h.n_layers),
        ("n_heads", h.n_heads),
        ("d_head", h.d_head),
    ] {
        ensure!(v > 0, "{what}: header field {field} is 0");
    }
    let row_bytes = 4 * h.shape().row_len() as u64;
    if h.n_rows as u64 * row_bytes != data_bytes {
        bail!(
            "{what}: header field n_rows = {} (× {row_bytes} bytes per row = {} bytes) disagrees \
             with the {data_bytes} bytes of rows in the file ({} rows): truncated or mismatched",
            h.n_rows,
            h.n_rows as u64 * row_bytes,
            data_bytes as f64 / row_bytes as f64
        );
    }
    ensure!(
        h.ids.len() == h.n_rows,
        "{what}: header field ids has {} entries, n_rows is {}",
        h.ids.len(),
        h.n_rows
    );
    check_ids(&h.ids, what)?;
    if let Some(l) = &h.labels {
        ensure!(
            l.len() == h.n_rows,
            "{what}: header field labels has {} entries, n_rows is {}",
            l.len(),
            h.n_rows
        );
    }
    Ok(())
}

impl HeadRows for Capture {
    fn n(&self) -> usize {
        self.header.n_rows
    }
    fn layers(&self) -> usize {
        self.header.n_layers
    }
    fn heads(&self) -> usize {
        self.header.n_heads
    }
    fn d_head(&self) -> usize {
        self.header.d_head
    }
    fn row(&self, i: usize, l: usize, h: usize) -> &[f32] {
        let dh = self.header.d_head;
        let off = (l * self.header.n_heads + h) * dh;
        &self.file_row(self.row_of_id[i])[off..off + dh]
    }
}
