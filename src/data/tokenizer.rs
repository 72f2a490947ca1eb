//! Tokenizers: a thin wrapper over the `tokenizers` crate (Hugging Face `tokenizer.json` format).
//!
//! Either load an existing `tokenizer.json` (plain or gzipped, e.g. OLMo's GPT-NeoX tokenizer
//! shipped in `assets/tokenizers/`), or train a byte-level BPE on the input text. Every tokenizer
//! used here must have the `<|endoftext|>` special token: it separates documents in shards.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

/// The special token that ends every document.
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// OLMo-1B's tokenizer (GPT-NeoX-20B BPE, 50,280 ids), gzipped `tokenizer.json`, embedded.
pub static OLMO_TOKENIZER_GZ: &[u8] =
    include_bytes!("../../assets/tokenizers/olmo-tokenizer.json.gz");

/// A loaded or trained tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn gunzip_if_needed(bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .context("decompressing gzip")?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`, or a gzipped one (detected by its magic bytes).
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading tokenizer {}", path.display()))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses a (possibly gzipped) `tokenizer.json` held in memory; `name` is used in messages.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Tokenizer> {
        let json = gunzip_if_needed(bytes).with_context(|| format!("tokenizer {name}"))?;
        let inner = tokenizers::Tokenizer::from_bytes(&json).map_err(|e| {
            anyhow!("tokenizer {name}: not a valid Hugging Face tokenizer.json: {e}")
        })?;
        Ok(Tokenizer {
            inner,
            source: name.to_string(),
        })
    }

    /// OLMo-1B's tokenizer, from the copy embedded in the binary.
    pub fn olmo() -> Result<Tokenizer> {
        Self::from_bytes(OLMO_TOKENIZER_GZ, "OLMo tokenizer (embedded)")
    }

    /// Trains a GPT-2-style byte-level BPE on `texts` with `vocab_size` ids in total (the 256
    /// byte symbols and `<|endoftext|>`, which gets id 0, included). Deterministic for the same
    /// texts. Decoding is lossless: `decode(encode(s)) == s` for any `s`.
    pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
        if vocab_size < 258 {
            bail!("BPE vocab size {vocab_size} is too small: expected at least 258 (256 bytes + <|endoftext|> + 1 merge)");
        }
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .special_tokens(vec![AddedToken::from(EOS_TOKEN.to_string(), true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tk = TokenizerBuilder::<
            BPE,
            tokenizers::NormalizerWrapper,
            ByteLevel,
            tokenizers::PostProcessorWrapper,
            ByteLevelDecoder,
        >::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(None)
        .with_decoder(Some(ByteLevelDecoder::default()))
        .build()
        .map_err(|e| anyhow!("building the BPE tokenizer: {e}"))?;
        tk.train(&mut trainer, texts.iter())
            .map_err(|e| anyhow!("training a {vocab_size}-id BPE: {e}"))?;
        let inner: tokenizers::Tokenizer = tk.into();
        let t = Tokenizer {
            inner,
            source: format!("byte-level BPE trained here ({vocab_size} ids)"),
        };
        t.eos_id()?;
        Ok(t)
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json` (atomically: `path.tmp`, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        self.inner
            .save(&tmp, false)
            .map_err(|e| anyhow!("writing tokenizer {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    /// Where the tokenizer came from (a path, or a description), for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of ids the tokenizer can emit, special tokens included (OLMo: 50,280).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `<|endoftext|>`; an error naming the tokenizer if it has none.
    pub fn eos_id(&self) -> Result<u32> {
        self.inner.token_to_id(EOS_TOKEN).ok_or_else(|| {
            anyhow!(
                "tokenizer {} has no {EOS_TOKEN} token: expected one, to separate documents",
                self.source
            )
        })
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id, if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes one text (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("tokenizer {}: encoding failed: {e}", self.source))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes many texts, in parallel; the output is in input order and does not depend on the
    /// number of threads. No special tokens are added.
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let encs = self
            .inner
            .encode_batch_fast(inputs, false)
            .map_err(|e| anyhow!("tokenizer {}: encoding failed: {e}", self.source))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Decodes ids back to text, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("tokenizer {}: decoding failed: {e}", self.source))
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The tokenizer's identity: SHA-256 of its canonical JSON (the `tokenizer.json` this
    /// tokenizer serialises to, with every object's keys sorted and no whitespace), so the same
    /// tokenizer has the same identity whether it was read plain, gzipped or re-saved. Shards
    /// record it ([`crate::data::shard`]), so shards of different tokenizers are not mixed.
    pub fn identity(&self) -> Result<TokenizerId> {
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| anyhow!("tokenizer {}: serialising: {e}", self.source))?;
        let v: serde_json::Value = serde_json::from_str(&json)
            .with_context(|| format!("tokenizer {}: re-reading its JSON", self.source))?;
        let mut canonical = String::with_capacity(json.len());
        write_canonical(&v, &mut canonical);
        let digest = <sha2::Sha256 as sha2::Digest>::digest(canonical.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Ok(TokenizerId(id))
    }
}

/// The first 16 bytes of the SHA-256 of a tokenizer's canonical JSON
/// ([`Tokenizer::identity`]); shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenizerId(pub [u8; 16]);

impl TokenizerId {
    /// The identity of the tokenizer file at `path` (plain or gzipped `tokenizer.json`).
    pub fn of_file(path: &Path) -> Result<TokenizerId> {
        Tokenizer::load(path)?.identity()
    }

    /// The first 12 hex digits, enough to tell two tokenizers apart in a message.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }
}

impl std::fmt::Display for TokenizerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for TokenizerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenizerId({self})")
    }
}

/// Appends `v` as JSON with every object's keys in sorted order and no whitespace.
fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Checks that every id a tokenizer emits has a row in the model's embedding: an error
/// "tokenizer X has N ids but the model's vocab_size is M" when `tokenizer_vocab > model_vocab`.
pub fn check_fits(tokenizer_vocab: usize, model_vocab: usize, tokenizer_path: &Path) -> Result<()> {
    if tokenizer_vocab > model_vocab {
        bail!(
            "tokenizer {} has {tokenizer_vocab} ids but the model's vocab_size is {model_vocab}: \
             expected vocab_size >= {tokenizer_vocab} (use a model config made for this \
             tokenizer)",
            tokenizer_path.display()
        );
    }
    Ok(())
}
