//! Writes the synthetic shapes datasets used by tests and benchmarks.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use ocellus_tests::fixtures;

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Layout {
    /// data.yaml, images/, labels/.
    Yolo,
    /// annotations/instances_<split>.json, images/.
    Coco,
    /// <split>/<class>/<image>.
    Folders,
}

#[derive(Parser, Debug)]
#[command(about = "Write a synthetic shapes dataset")]
struct Args {
    /// Layout.
    #[arg(long, env = "OCELLUS_FIXTURE_LAYOUT", value_enum, default_value = "yolo")]
    layout: Layout,
    /// Number of images.
    #[arg(long, env = "OCELLUS_FIXTURE_IMAGES", default_value_t = 1000)]
    images: usize,
    /// Image size in pixels.
    #[arg(long, env = "OCELLUS_FIXTURE_SIZE", default_value_t = 160)]
    size: u32,
    /// Seed.
    #[arg(long, env = "OCELLUS_FIXTURE_SEED", default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long, env = "OCELLUS_FIXTURE_OUT")]
    out: PathBuf,
}

fn main() {
    let a = Args::parse();
    match a.layout {
        Layout::Yolo => fixtures::write_yolo(&a.out, &fixtures::samples(a.seed, a.images, a.size), a.size),
        Layout::Coco => fixtures::write_coco(&a.out, &fixtures::samples(a.seed, a.images, a.size), a.size),
        Layout::Folders => fixtures::write_folders(&a.out, a.seed, a.images, a.size),
    }
    println!("wrote {} images to {}", a.images, a.out.display());
}
