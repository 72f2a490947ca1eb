//! Compiles the CUDA kernels in `cuda/*.cu` into fatbins and embeds them in the crate.
//!
//! - nvcc is looked up in order: `$NVCC`, `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, `PATH`,
//!   then the project-local toolchain installed by `tools/setup-cuda.sh`
//!   (`.cuda/venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc`).
//! - Each `.cu` file becomes one fatbin (one CUDA module) holding SASS for sm_80 and sm_90 and
//!   compute_90 PTX (JIT-compiled by the driver on newer GPUs). No `--use_fast_math`: the
//!   kernels must match the CPU references (IEEE division and square root).
//! - `-Xptxas -v` reports register use; any non-zero spill becomes a `cargo:warning`.
//! - Results are cached under `target/<profile>/baddata-cuda/`, keyed by a hash of the `.cu`
//!   file, every header in `cuda/`, the nvcc flags and nvcc's version, so `cargo clippy` and
//!   `cargo build` do not recompile unchanged kernels.
//! - `$OUT_DIR/kernels.rs` defines `KERNELS: &[(&str, &[u8])]` (module name, fatbin bytes) and the
//!   crate gets `--cfg baddata_kernels` when they were compiled.
//! - Without nvcc the crate builds CPU-only with one warning; `BADDATA_REQUIRE_CUDA=1` turns a
//!   missing nvcc or a failed compile into a build error.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags for every kernel file (the output and input paths are added per file).
const NVCC_FLAGS: &[&str] = &[
    "-fatbin",
    "-O3",
    "-std=c++17",
    "-gencode",
    "arch=compute_80,code=sm_80",
    "-gencode",
    "arch=compute_90,code=sm_90",
    "-gencode",
    "arch=compute_90,code=compute_90",
    "-Xptxas",
    "-v",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(baddata_kernels)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "BADDATA_REQUIRE_CUDA",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let required = env::var("BADDATA_REQUIRE_CUDA").is_ok_and(|v| v == "1");

    let kernels = match find_nvcc(&manifest) {
        None => {
            fail_or_warn(
                required,
                "no CUDA compiler found ($NVCC, $CUDA_HOME, $CUDA_PATH, PATH, .cuda/venv); \
                 run tools/setup-cuda.sh to install nvcc and get the GPU kernels",
            );
            Vec::new()
        }
        Some(nvcc) => {
            // Re-run when the project-local toolchain is (re)installed.
            println!("cargo:rerun-if-changed={}", nvcc.display());
            match compile_all(&nvcc, &manifest, &out_dir) {
                Ok(k) => k,
                Err(e) => {
                    fail_or_warn(required, &format!("CUDA kernels failed to compile: {e}"));
                    Vec::new()
                }
            }
        }
    };

    let mut src = String::from(
        "/// Embedded CUDA modules: (module name = `.cu` file stem, fatbin bytes).\n\
         pub const KERNELS: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in &kernels {
        writeln!(src, "    ({name:?}, include_bytes!({:?})),", path.display()).unwrap();
    }
    src.push_str("];\n");
    fs::write(out_dir.join("kernels.rs"), src).expect("write kernels.rs");
    if !kernels.is_empty() {
        println!("cargo:rustc-cfg=baddata_kernels");
    }
}

/// Prints a cargo warning (the crate then builds CPU-only), or fails the build when kernels
/// are required.
fn fail_or_warn(required: bool, msg: &str) {
    if required {
        eprintln!("error: {msg}");
        eprintln!("(BADDATA_REQUIRE_CUDA=1 makes this an error)");
        std::process::exit(1);
    }
    // A cargo warning is one line: keep the first lines of a long compiler log.
    let mut lines = msg.lines();
    println!(
        "cargo:warning=building CPU-only: {}",
        lines.next().unwrap_or_default()
    );
    for l in lines.take(20) {
        println!("cargo:warning={l}");
    }
}

/// The first nvcc found, in the documented order.
fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    let is_exe = |p: &Path| p.is_file();
    if let Some(p) = env::var_os("NVCC").map(PathBuf::from) {
        if is_exe(&p) {
            return Some(p);
        }
        println!(
            "cargo:warning=$NVCC={} is not a file; looking elsewhere",
            p.display()
        );
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = PathBuf::from(home).join("bin").join("nvcc");
            if is_exe(&p) {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if is_exe(&p) {
                return Some(p);
            }
        }
    }
    let lib = manifest.join(".cuda/venv/lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .map(|p| p.join("site-packages/nvidia/cu13/bin/nvcc"))
        .filter(|p| is_exe(p))
        .collect();
    found.sort();
    found.pop()
}

/// 64-bit FNV-1a, stable across Rust versions (the cache key must not change between builds).
fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    let mut h = state;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Compiles every `cuda/*.cu` and returns (module name, fatbin path in OUT_DIR).
fn compile_all(
    nvcc: &Path,
    manifest: &Path,
    out_dir: &Path,
) -> Result<Vec<(String, PathBuf)>, String> {
    let cuda_dir = manifest.join("cuda");
    let mut sources = Vec::new();
    let mut headers = Vec::new();
    for entry in fs::read_dir(&cuda_dir)
        .map_err(|e| format!("cannot read {}: {e}", cuda_dir.display()))?
        .flatten()
    {
        let p = entry.path();
        match p.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(p),
            Some("cuh") | Some("h") => headers.push(p),
            _ => {}
        }
    }
    sources.sort();
    headers.sort();

    let version = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if !version.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            nvcc.display(),
            String::from_utf8_lossy(&version.stderr)
        ));
    }

    // Key shared by all files: headers, flags, compiler.
    let mut common = 0xcbf2_9ce4_8422_2325u64;
    for h in &headers {
        let bytes = fs::read(h).map_err(|e| format!("cannot read {}: {e}", h.display()))?;
        common = fnv1a(common, h.file_name().unwrap().as_encoded_bytes());
        common = fnv1a(common, &bytes);
    }
    for f in NVCC_FLAGS {
        common = fnv1a(common, f.as_bytes());
    }
    common = fnv1a(common, nvcc.as_os_str().as_encoded_bytes());
    common = fnv1a(common, &version.stdout);

    let cache = cache_dir(out_dir);
    fs::create_dir_all(&cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;

    let mut out = Vec::new();
    for src in &sources {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
        let key = fnv1a(common, &bytes);
        let cached = cache.join(format!("{stem}-{key:016x}.fatbin"));
        let log = cache.join(format!("{stem}-{key:016x}.log"));
        if !(cached.is_file() && log.is_file()) {
            let tmp = cache.join(format!("{stem}-{key:016x}.fatbin.tmp"));
            let o = Command::new(nvcc)
                .args(NVCC_FLAGS)
                .arg("-I")
                .arg(&cuda_dir)
                .arg("-o")
                .arg(&tmp)
                .arg(src)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            if !o.status.success() {
                return Err(format!("nvcc failed on {}:\n{text}", src.display()));
            }
            fs::write(&log, &text).map_err(|e| format!("cannot write {}: {e}", log.display()))?;
            fs::rename(&tmp, &cached)
                .map_err(|e| format!("cannot write {}: {e}", cached.display()))?;
        }
        // Spill warnings are re-emitted from the stored log on every run of this script.
        let text = fs::read_to_string(&log).unwrap_or_default();
        for w in spills(&text) {
            println!("cargo:warning={stem}.cu: {w}");
        }
        let dest = out_dir.join(format!("{stem}.fatbin"));
        fs::copy(&cached, &dest).map_err(|e| format!("cannot copy to {}: {e}", dest.display()))?;
        out.push((stem, dest));
    }
    Ok(out)
}

/// `target/<profile>/baddata-cuda`, shared by build and clippy of one profile; OUT_DIR otherwise.
fn cache_dir(out_dir: &Path) -> PathBuf {
    // OUT_DIR = target/<profile>/build/baddata-<hash>/out
    match out_dir.ancestors().nth(3) {
        Some(profile_dir)
            if out_dir
                .ancestors()
                .nth(2)
                .is_some_and(|b| b.ends_with("build")) =>
        {
            profile_dir.join("baddata-cuda")
        }
        _ => out_dir.join("cache"),
    }
}

/// Lines describing non-zero register spills in `-Xptxas -v` output, naming function and arch.
fn spills(log: &str) -> Vec<String> {
    let mut current = String::new();
    let mut found = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.replace("' for '", " (").replace('\'', ")");
        }
        if line.contains("spill stores") {
            let n = |what: &str| -> u64 {
                line.split(',')
                    .find(|s| s.contains(what))
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            };
            let (st, ld) = (n("spill stores"), n("spill loads"));
            if st > 0 || ld > 0 {
                found.push(format!(
                    "register spill in {current}: {st} bytes spill stores, {ld} bytes spill loads"
                ));
            }
        }
    }
    found
}
