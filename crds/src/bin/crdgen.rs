//! Writes the CRD YAML into `crds/yaml/` and `charts/ocellus/crds/`, and each kind's reference
//! page into `docs/reference/`.
//!
//! `crdgen` writes the files; `crdgen --check` exits non-zero when a committed file differs.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stale = Vec::new();
    for (file, crd) in ocellus_crds::all_crds() {
        let yaml = match ocellus_crds::render_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot render {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let page = ocellus_crds::reference::render(&crd);
        let page_file = format!("{}.md", crd.spec.names.plural);
        let outputs = ocellus_crds::OUTPUT_DIRS.iter().map(|dir| (*dir, file.to_string(), &yaml)).chain([(
            ocellus_crds::REFERENCE_DIR,
            page_file,
            &page,
        )]);
        for (dir, file, content) in outputs {
            let path = root.join(dir).join(&file);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if &current == content {
                continue;
            }
            if check {
                stale.push(path.display().to_string());
            } else if let Err(e) = std::fs::create_dir_all(root.join(dir)).and_then(|_| std::fs::write(&path, content))
            {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            } else {
                println!("wrote {}", path.display());
            }
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "crdgen: generated CRDs differ from the committed files (run `cargo run -p ocellus-crds --bin crdgen`):"
        );
        for s in stale {
            eprintln!("  {s}");
        }
        ExitCode::FAILURE
    }
}
