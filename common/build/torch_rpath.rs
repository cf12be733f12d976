//! With the `torch` feature, embeds an rpath to libtorch's libraries so the binary runs without
//! LD_LIBRARY_PATH on the machine it was built for (and on the GPU machines, which ship the
//! same PyTorch build at the same path when the venv is carried).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
