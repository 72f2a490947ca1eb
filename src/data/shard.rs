//! Token shards: one flat file of token ids behind a fixed 64-byte header, read through `memmap2`.
//!
//! Layout (all integers little-endian; see docs/shards.md):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `b"BDSHARD\0"` |
//! | 8..12 | format version, `u32` (= [`SHARD_VERSION`]) |
//! | 12..16 | token width in bytes, `u32`: 2 (`u16` ids) or 4 (`u32` ids) |
//! | 16..24 | vocabulary size, `u64`: every token is below it |
//! | 24..32 | token count, `u64` |
//! | 32..36 | CRC-32 (IEEE 802.3, as in gzip/zlib) of the token bytes, `u32` |
//! | 36..52 | the tokenizer's identity ([`TokenizerId`]), all zeros when unknown (version 2) |
//! | 52..64 | zero padding |
//! | 64.. | `count` tokens of `width` bytes each |
//!
//! Documents are separated by the tokenizer's end-of-text id; the shard itself does not know it.
//! Version 1 shards (no tokenizer identity; bytes 36..64 all padding) are still read.

use super::tokenizer::TokenizerId;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The eight bytes every shard starts with.
pub const SHARD_MAGIC: [u8; 8] = *b"BDSHARD\0";
/// The format version this code writes (it reads this one and version 1).
pub const SHARD_VERSION: u32 = 2;
/// Size of the fixed header; tokens start at this byte offset.
pub const HEADER_BYTES: usize = 64;
/// Tokens encoded per write when writing a shard.
const CHUNK_TOKENS: usize = 1 << 16;

/// CRC-32 (IEEE, reflected polynomial 0xEDB88320) of `bytes`, the shard checksum.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// The byte width a shard uses for a vocabulary: 2 when every id fits a `u16`, else 4.
pub fn token_width(vocab_size: usize) -> usize {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

/// The path a shard is first written to before being renamed over `path`: `path` + ".tmp".
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `tokens` as a shard at `path`, atomically: the bytes go to `path.tmp`, are synced, then
/// renamed over `path`, so a failure never leaves a half-written shard nor harms an existing one.
///
/// The width is 2 bytes when `vocab_size <= 65536`, else 4. `tokenizer` is the identity of the
/// tokenizer that made the tokens (`None`: unknown, as for synthetic tokens). Errors if any token
/// is `>= vocab_size` (naming the first such index), if `vocab_size` is 0, or on any I/O failure.
pub fn write_shard(
    path: &Path,
    tokens: &[u32],
    vocab_size: usize,
    tokenizer: Option<TokenizerId>,
) -> Result<()> {
    if vocab_size == 0 {
        bail!("shard {}: vocab_size must be positive", path.display());
    }
    if let Some((i, &t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= vocab_size)
    {
        bail!(
            "shard {}: token at index {i} is {t}, expected below the vocab size {vocab_size}",
            path.display()
        );
    }
    let width = token_width(vocab_size);
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&SHARD_MAGIC);
    header[8..12].copy_from_slice(&SHARD_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(width as u32).to_le_bytes());
    header[16..24].copy_from_slice(&(vocab_size as u64).to_le_bytes());
    header[24..32].copy_from_slice(&(tokens.len() as u64).to_le_bytes());
    if let Some(id) = tokenizer {
        header[36..52].copy_from_slice(&id.0);
    }
    // Bytes 32..36 (the CRC) are filled in once the tokens are written.

    let tmp = tmp_path(path);
    let write = || -> Result<()> {
        let ctx = || format!("writing {}", tmp.display());
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&header).with_context(ctx)?;
        // Tokens go out in chunks, the CRC accumulated on the way: no second copy of the shard.
        let mut crc = flate2::Crc::new();
        let mut buf = Vec::with_capacity(CHUNK_TOKENS * width);
        for chunk in tokens.chunks(CHUNK_TOKENS) {
            buf.clear();
            if width == 2 {
                for &t in chunk {
                    buf.extend_from_slice(&(t as u16).to_le_bytes());
                }
            } else {
                for &t in chunk {
                    buf.extend_from_slice(&t.to_le_bytes());
                }
            }
            crc.update(&buf);
            w.write_all(&buf).with_context(ctx)?;
        }
        w.seek(SeekFrom::Start(32)).with_context(ctx)?;
        w.write_all(&crc.sum().to_le_bytes()).with_context(ctx)?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(ctx)?;
        file.sync_all().with_context(ctx)?;
        drop(file);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    };
    let result = write();
    if result.is_err() && tmp.is_file() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A read-only, memory-mapped, validated token shard.
///
/// [`Shard::open`] checks the whole file (header, size, checksum, every token below the vocab),
/// so the accessors below never see malformed data. They panic only on out-of-range indices,
/// which are programming errors of the caller.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    width: usize,
    len: usize,
    vocab_size: usize,
    tokenizer: Option<TokenizerId>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("width", &self.width)
            .field("len", &self.len)
            .field("vocab_size", &self.vocab_size)
            .field("tokenizer", &self.tokenizer)
            .finish()
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Shard {
    /// Opens and validates a shard. Every error names the file, the problem, and what was
    /// expected: file shorter than the header, wrong magic, unsupported version, bad token width,
    /// file size disagreeing with the header's count × width, checksum mismatch, or a token
    /// `>= vocab_size` (with the first bad index and value).
    pub fn open(path: &Path) -> Result<Shard> {
        let p = path.display();
        let file = File::open(path).with_context(|| format!("opening shard {p}"))?;
        let file_len = file
            .metadata()
            .with_context(|| format!("reading the size of shard {p}"))?
            .len();
        if file_len < HEADER_BYTES as u64 {
            bail!(
                "shard {p}: file is {file_len} bytes, shorter than the {HEADER_BYTES}-byte header \
                 (truncated or not a shard)"
            );
        }
        // SAFETY: the map is read-only; shards are written once (atomically, by rename) and
        // never modified in place, so no other writer changes the bytes under us.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping shard {p}"))?;
        let b = &map[..];
        if b[0..8] != SHARD_MAGIC {
            bail!(
                "shard {p}: wrong magic bytes {:?}, expected {:?} (\"BDSHARD\\0\"): not a token \
                 shard written by `prepare`",
                String::from_utf8_lossy(&b[0..8]),
                String::from_utf8_lossy(&SHARD_MAGIC)
            );
        }
        let version = read_u32(b, 8);
        if version != 1 && version != SHARD_VERSION {
            bail!("shard {p}: unsupported format version {version}, expected 1 or {SHARD_VERSION}");
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[36..52]);
        let tokenizer = (version >= 2 && id != [0u8; 16]).then_some(TokenizerId(id));
        let width = read_u32(b, 12) as usize;
        if width != 2 && width != 4 {
            bail!("shard {p}: token width is {width} bytes, expected 2 or 4");
        }
        let vocab = read_u64(b, 16);
        if vocab == 0 || (width == 2 && vocab > 1 << 16) || vocab > 1 << 32 {
            bail!(
                "shard {p}: vocab size {vocab} is not valid for {width}-byte tokens, expected \
                 1..={}",
                if width == 2 { 1u64 << 16 } else { 1u64 << 32 }
            );
        }
        let count = read_u64(b, 24);
        let expected = count
            .checked_mul(width as u64)
            .and_then(|n| n.checked_add(HEADER_BYTES as u64));
        if expected != Some(file_len) {
            bail!(
                "shard {p}: file is {file_len} bytes but the header says {count} tokens of \
                 {width} bytes, expected {HEADER_BYTES} + {count}×{width} = {} bytes \
                 (truncated or corrupt)",
                expected.map_or("overflow".to_string(), |e| e.to_string())
            );
        }
        let stored_crc = read_u32(b, 32);
        let body = &b[HEADER_BYTES..];
        let actual_crc = crc32(body);
        if actual_crc != stored_crc {
            bail!(
                "shard {p}: checksum mismatch: header says CRC-32 {stored_crc:#010x}, the token \
                 bytes give {actual_crc:#010x} (the file is corrupt)"
            );
        }
        let len = count as usize;
        let shard = Shard {
            path: path.to_path_buf(),
            width,
            len,
            vocab_size: vocab as usize,
            tokenizer,
            map,
        };
        if let Some((i, t)) = shard.first_out_of_vocab() {
            bail!(
                "shard {p}: token at index {i} is {t}, expected below the vocab size {vocab} \
                 given in the header"
            );
        }
        Ok(shard)
    }

    fn first_out_of_vocab(&self) -> Option<(usize, u64)> {
        let body = &self.map[HEADER_BYTES..];
        let v = self.vocab_size as u64;
        if self.width == 2 {
            body.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u64)
                .enumerate()
                .find(|&(_, t)| t >= v)
        } else {
            body.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64)
                .enumerate()
                .find(|&(_, t)| t >= v)
        }
    }

    /// Number of tokens in the shard.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the shard holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The vocabulary size recorded in the header (every token is below it).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The identity of the tokenizer that made the tokens, when the shard records it (version 2
    /// shards written by `prepare`).
    pub fn tokenizer(&self) -> Option<TokenizerId> {
        self.tokenizer
    }

    /// Bytes per token on disk: 2 or 4.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The file this shard was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token `i`. Panics if `i >= len()`.
    pub fn get(&self, i: usize) -> u32 {
        assert!(
            i < self.len,
            "token index {i} out of range for shard of {} tokens",
            self.len
        );
        let at = HEADER_BYTES + i * self.width;
        let b = &self.map[at..at + self.width];
        if self.width == 2 {
            u16::from_le_bytes([b[0], b[1]]) as u32
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }

    /// Copies tokens `start .. start + out.len()` into `out`. Panics if that range passes the end.
    pub fn copy_to(&self, start: usize, out: &mut [u32]) {
        let end = start
            .checked_add(out.len())
            .filter(|&e| e <= self.len)
            .unwrap_or_else(|| {
                panic!(
                    "window {start}..{}+{} out of range for shard of {} tokens",
                    start,
                    out.len(),
                    self.len
                )
            });
        let bytes = &self.map[HEADER_BYTES + start * self.width..HEADER_BYTES + end * self.width];
        if self.width == 2 {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = u16::from_le_bytes([c[0], c[1]]) as u32;
            }
        } else {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }

    /// Tokens `start .. start + n` as a new vector. Panics if that range passes the end.
    pub fn window(&self, start: usize, n: usize) -> Vec<u32> {
        let mut out = vec![0u32; n];
        self.copy_to(start, &mut out);
        out
    }

    /// All tokens as a vector (for small shards: validation sets, tests).
    pub fn to_vec(&self) -> Vec<u32> {
        self.window(0, self.len)
    }
}
