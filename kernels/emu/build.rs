//! Compiles the unmodified CUDA kernels (`../*.cu`) with the host C++
//! compiler against our emulation header (`include/cuda_emu.h`), plus the
//! scheduler (`src/runtime.cpp`), the emulation's own test kernels
//! (`selftest.cu`) and two mutants of `score.cu` for the mutation check.
//!
//! Each unit is a generated C++ file that includes the `.cu` file and lists
//! its kernels in a table; `gcm_emu_find` (generated too) looks a kernel up
//! by unit and name. A kernel missing from the lists below cannot be launched
//! (the launch fails naming it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The dtype suffixes of the score kernels.
const SCORE_TYPES: &[&str] = &["f32", "f64", "f16", "bf16"];
const SCORE_KERNELS: &[&str] = &[
    "gcm_score_partial",
    "gcm_score_finish",
    "gcm_score_grad_cwm",
    "gcm_score_grad_img",
];
const EVIDENCE: &[&str] = &["gcm_ccm_max", "gcm_ccm_quantise", "gcm_ccm_qsum"];
const PREPROCESS: &[&str] = &["gcm_preprocess", "gcm_scale"];
const SELFTEST: &[&str] = &["emu_lanes", "emu_barrier", "emu_bad_mask"];

/// One mutation of the mutation check: `score.cu` with the one line `from`
/// replaced by `to`, compiled as unit `number`.
struct Mutation {
    tag: &'static str,
    number: u32,
    from: &'static str,
    to: &'static str,
}

const MUTATIONS: &[Mutation] = &[
    // An off-by-one in the bound of score_partial's channel loop: the last
    // channel is left out of S.
    Mutation {
        tag: "channel_bound",
        number: 2,
        from: "for (uint64_t ch = 0; ch < d; ++ch) acc += load(im + ch * img_sd + idx);",
        to: "for (uint64_t ch = 0; ch + 1 < d; ++ch) acc += load(im + ch * img_sd + idx);",
    },
    // An off-by-one in score_partial's index of the plane: each thread reads
    // the element after its own, so every tile reads the next tile's first
    // element instead of its own and element 0 of the plane is never read
    // (the bound check keeps the reads inside the plane).
    Mutation {
        tag: "tile_index",
        number: 3,
        from: "const uint64_t base = chunk * (SCORE_THREADS * SCORE_K) + threadIdx.x;",
        to: "const uint64_t base = chunk * (SCORE_THREADS * SCORE_K) + threadIdx.x + 1;",
    },
];

/// Unit numbers, as `src/lib.rs`'s `Unit` has them (the mutants' are in
/// `MUTATIONS`).
const KERNELS: u32 = 0;
const SELF_TEST: u32 = 1;

struct Unit {
    /// The C++ file's stem and the table's symbol.
    tag: &'static str,
    number: u32,
    source: PathBuf,
    kernels: Vec<String>,
    /// Lines before the `#include` of the source (the mutant's renames).
    prelude: String,
}

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let kernels_dir = here
        .parent()
        .expect("kernels/emu has a parent")
        .to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for p in ["build.rs", "include", "src/runtime.cpp", "selftest.cu"] {
        println!("cargo:rerun-if-changed={}", here.join(p).display());
    }
    for p in ["common.cuh", "score.cu", "evidence.cu", "preprocess.cu"] {
        println!("cargo:rerun-if-changed={}", kernels_dir.join(p).display());
    }

    let score: Vec<String> = SCORE_KERNELS
        .iter()
        .flat_map(|k| SCORE_TYPES.iter().map(move |t| format!("{k}_{t}")))
        .collect();
    let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut units = vec![
        unit(
            "score",
            KERNELS,
            kernels_dir.join("score.cu"),
            score.clone(),
        ),
        unit(
            "evidence",
            KERNELS,
            kernels_dir.join("evidence.cu"),
            list(EVIDENCE),
        ),
        unit(
            "preprocess",
            KERNELS,
            kernels_dir.join("preprocess.cu"),
            list(PREPROCESS),
        ),
        unit(
            "selftest",
            SELF_TEST,
            here.join("selftest.cu"),
            list(SELFTEST),
        ),
    ];
    for m in MUTATIONS {
        // Renamed, so that the mutant's kernels and templates do not clash
        // with the originals' in the one library.
        let mut prelude = format!("#define gcm gcm_{}\n", m.tag);
        for k in &score {
            writeln!(prelude, "#define {k} {}_{k}", m.tag).unwrap();
        }
        units.push(Unit {
            prelude,
            ..unit(
                m.tag,
                m.number,
                mutant_source(m, &kernels_dir, &out),
                score.clone(),
            )
        });
    }

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++14")
        .include(here.join("include"))
        .include(&kernels_dir)
        // Plain IEEE operations: no contraction of a*b+c into an FMA.
        .flag_if_supported("-ffp-contract=off")
        .flag_if_supported("-Wno-unknown-pragmas")
        .file(here.join("src/runtime.cpp"));
    for u in &units {
        build.file(write_unit(u, &out));
    }
    build.file(write_registry(&units, &out));
    build.compile("gcm_cuda_emu");
}

fn unit(tag: &'static str, number: u32, source: PathBuf, kernels: Vec<String>) -> Unit {
    Unit {
        tag,
        number,
        source,
        kernels,
        prelude: String::new(),
    }
}

/// `score.cu` with mutation `m` applied, in `$OUT_DIR/<tag>/`; tells the
/// crate whether it applied (`GCM_EMU_MUTANT_<number>`: the line it
/// replaces occurs once in `score.cu`).
fn mutant_source(m: &Mutation, kernels_dir: &Path, out: &Path) -> PathBuf {
    let src = std::fs::read_to_string(kernels_dir.join("score.cu")).expect("read score.cu");
    let applied = src.matches(m.from).count() == 1;
    println!("cargo:rustc-env=GCM_EMU_MUTANT_{}={applied}", m.number);
    let dir = out.join(m.tag);
    std::fs::create_dir_all(&dir).expect("create a mutant's directory");
    let path = dir.join("score.cu");
    std::fs::write(&path, src.replace(m.from, m.to)).expect("write the mutant");
    path
}

fn write_unit(u: &Unit, out: &Path) -> PathBuf {
    let mut s = String::from("// Generated by build.rs.\n#include \"cuda_emu.h\"\n");
    s += &u.prelude;
    writeln!(s, "#include \"{}\"", u.source.display()).unwrap();
    writeln!(s, "static const gcm_emu::Kernel table[] = {{").unwrap();
    for k in &u.kernels {
        writeln!(s, "    GCM_EMU_KERNEL({k}),").unwrap();
    }
    writeln!(s, "}};").unwrap();
    writeln!(
        s,
        "extern \"C\" const gcm_emu::Kernel* gcm_emu_unit_{}(size_t* n) {{\n    \
         *n = sizeof table / sizeof table[0];\n    return table;\n}}",
        u.tag
    )
    .unwrap();
    let path = out.join(format!("unit_{}.cpp", u.tag));
    std::fs::write(&path, s).expect("write a unit");
    path
}

fn write_registry(units: &[Unit], out: &Path) -> PathBuf {
    let mut s = String::from("// Generated by build.rs.\n#include \"cuda_emu.h\"\n");
    for u in units {
        writeln!(
            s,
            "extern \"C\" const gcm_emu::Kernel* gcm_emu_unit_{}(size_t* n);",
            u.tag
        )
        .unwrap();
    }
    s += "extern \"C\" const gcm_emu::Kernel* gcm_emu_find(int unit, const char* name) {\n";
    s += "    struct { int unit; const gcm_emu::Kernel* (*table)(size_t*); } units[] = {\n";
    for u in units {
        writeln!(s, "        {{{}, gcm_emu_unit_{}}},", u.number, u.tag).unwrap();
    }
    s += "    };\n    for (const auto& u : units) {\n        if (u.unit != unit) continue;\n";
    s += "        size_t n = 0;\n        const gcm_emu::Kernel* t = u.table(&n);\n";
    s += "        for (size_t i = 0; i < n; ++i)\n";
    s += "            if (strcmp(t[i].name, name) == 0) return &t[i];\n    }\n";
    s += "    return nullptr;\n}\n";
    let path = out.join("registry.cpp");
    std::fs::write(&path, s).expect("write the registry");
    path
}
