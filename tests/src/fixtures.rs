//! Synthetic datasets the tests (and benchmarks) build: coloured shapes on a plain background
//! with exact boxes, in YOLO, COCO and class-folder layouts, and archives of them.

use std::io::Write;
use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};

/// Class names of the shapes datasets.
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];

/// A shape in pixels: class and the box (x0, y0, x1, y1), exclusive ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Index into [`SHAPES`].
    pub class: usize,
    /// Left.
    pub x0: u32,
    /// Top.
    pub y0: u32,
    /// Right (exclusive).
    pub x1: u32,
    /// Bottom (exclusive).
    pub y1: u32,
}

pub use ocellus_vision::rng::Rng;

/// Draws `n` non-overlapping shapes on a `size`x`size` image; returns the image and its shapes.
pub fn shapes_image(rng: &mut Rng, size: u32, n: usize) -> (RgbImage, Vec<Shape>) {
    let bg = Rgb([rng.range(0, 60) as u8, rng.range(0, 60) as u8, rng.range(0, 60) as u8]);
    let mut img = RgbImage::from_pixel(size, size, bg);
    let mut shapes: Vec<Shape> = Vec::new();
    let colors = [Rgb([230, 60, 60]), Rgb([60, 200, 80]), Rgb([70, 110, 240])];
    for _ in 0..n * 20 {
        if shapes.len() == n {
            break;
        }
        let s = rng.range(size / 8, size / 3);
        let (x0, y0) = (rng.range(0, size - s), rng.range(0, size - s));
        let cand = Shape { class: rng.range(0, 3) as usize, x0, y0, x1: x0 + s, y1: y0 + s };
        if shapes.iter().any(|o| cand.x0 < o.x1 + 2 && o.x0 < cand.x1 + 2 && cand.y0 < o.y1 + 2 && o.y0 < cand.y1 + 2) {
            continue;
        }
        let c = colors[cand.class];
        let (cx, cy, r) = (f64::from(x0) + f64::from(s) / 2.0, f64::from(y0) + f64::from(s) / 2.0, f64::from(s) / 2.0);
        for y in y0..y0 + s {
            for x in x0..x0 + s {
                let (px, py) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
                let inside = match cand.class {
                    0 => (px - cx).powi(2) + (py - cy).powi(2) <= r * r,
                    1 => true,
                    // Apex at the top centre, base along the bottom edge.
                    _ => (px - cx).abs() <= (py - f64::from(y0)) / 2.0,
                };
                if inside {
                    img.put_pixel(x, y, c);
                }
            }
        }
        shapes.push(cand);
    }
    (img, shapes)
}

/// Encodes an image.
pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format).expect("encode");
    buf.into_inner()
}

/// YOLO label text for shapes on a `size` image.
pub fn yolo_labels(shapes: &[Shape], size: u32) -> String {
    let s = f64::from(size);
    shapes
        .iter()
        .map(|b| {
            format!(
                "{} {:.6} {:.6} {:.6} {:.6}\n",
                b.class,
                f64::from(b.x0 + b.x1) / 2.0 / s,
                f64::from(b.y0 + b.y1) / 2.0 / s,
                f64::from(b.x1 - b.x0) / s,
                f64::from(b.y1 - b.y0) / s
            )
        })
        .collect()
}

/// One generated image.
#[derive(Debug, Clone)]
pub struct Sample {
    /// File stem.
    pub stem: String,
    /// `train` or `val`.
    pub split: &'static str,
    /// JPEG bytes.
    pub jpeg: Vec<u8>,
    /// Shapes.
    pub shapes: Vec<Shape>,
}

/// `n` samples, 80% train / 20% val, seeded.
pub fn samples(seed: u64, n: usize, size: u32) -> Vec<Sample> {
    let mut rng = Rng::from_state(seed);
    (0..n)
        .map(|i| {
            let k = 1 + rng.range(0, 3) as usize;
            let (img, shapes) = shapes_image(&mut rng, size, k);
            Sample {
                stem: format!("img{i:05}"),
                split: if i % 5 == 4 { "val" } else { "train" },
                jpeg: encode(&img, ImageFormat::Jpeg),
                shapes,
            }
        })
        .collect()
}

/// Writes a YOLO layout (data.yaml, images/, labels/) under `dir`.
pub fn write_yolo(dir: &Path, samples: &[Sample], size: u32) {
    let names: Vec<String> = SHAPES.iter().enumerate().map(|(i, n)| format!("  {i}: {n}")).collect();
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(
        dir.join("data.yaml"),
        format!("train: images/train\nval: images/val\nnames:\n{}\n", names.join("\n")),
    )
    .expect("yaml");
    for s in samples {
        for sub in ["images", "labels"] {
            std::fs::create_dir_all(dir.join(sub).join(s.split)).expect("dir");
        }
        std::fs::write(dir.join("images").join(s.split).join(format!("{}.jpg", s.stem)), &s.jpeg).expect("img");
        std::fs::write(dir.join("labels").join(s.split).join(format!("{}.txt", s.stem)), yolo_labels(&s.shapes, size))
            .expect("lbl");
    }
}

/// Writes a COCO layout (`annotations/instances_<split>.json`, `images/<split>/`) under `dir`.
pub fn write_coco(dir: &Path, samples: &[Sample], size: u32) {
    for split in ["train", "val"] {
        let mut images = vec![];
        let mut anns = vec![];
        for (i, s) in samples.iter().enumerate().filter(|(_, s)| s.split == split) {
            std::fs::create_dir_all(dir.join("images").join(split)).expect("dir");
            std::fs::write(dir.join("images").join(split).join(format!("{}.jpg", s.stem)), &s.jpeg).expect("img");
            images.push(
                serde_json::json!({"id": i + 1, "file_name": format!("{}.jpg", s.stem), "width": size, "height": size}),
            );
            for b in &s.shapes {
                anns.push(serde_json::json!({
                    "id": anns.len() + 1, "image_id": i + 1, "category_id": b.class + 1, "iscrowd": 0,
                    "bbox": [b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0], "area": (b.x1 - b.x0) * (b.y1 - b.y0),
                }));
            }
        }
        // COCO category ids start at 1.
        let cats: Vec<_> =
            SHAPES.iter().enumerate().map(|(i, n)| serde_json::json!({"id": i + 1, "name": n})).collect();
        std::fs::create_dir_all(dir.join("annotations")).expect("dir");
        let doc = serde_json::json!({"images": images, "annotations": anns, "categories": cats});
        std::fs::write(dir.join("annotations").join(format!("instances_{split}.json")), doc.to_string()).expect("json");
    }
}

/// Writes a classification layout (`<split>/<class>/<image>`), one shape per image.
pub fn write_folders(dir: &Path, seed: u64, n: usize, size: u32) {
    let mut rng = Rng::from_state(seed);
    for i in 0..n {
        let (img, shapes) = shapes_image(&mut rng, size, 1);
        let class = SHAPES[shapes[0].class];
        let split = if i % 5 == 4 { "val" } else { "train" };
        let d = dir.join(split).join(class);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join(format!("img{i:05}.png")), encode(&img, ImageFormat::Png)).expect("img");
    }
}

fn files(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).expect("prefix").to_string_lossy().into_owned(), p));
            }
        }
    }
    out.sort();
    out
}

/// Zips a directory.
pub fn zip_dir(dir: &Path) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, path) in files(dir) {
        w.start_file(name, opts).expect("zip entry");
        w.write_all(&std::fs::read(path).expect("read")).expect("write");
    }
    w.finish().expect("zip").into_inner()
}

/// tar.gz of a directory.
pub fn tar_gz_dir(dir: &Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, path) in files(dir) {
        b.append_path_with_name(path, name).expect("tar entry");
    }
    b.into_inner().expect("tar").finish().expect("gz")
}

/// A zip with raw entries `(name, bytes)`, names stored as given (e.g. `../evil.txt`).
pub fn zip_entries(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).expect("zip entry");
        w.write_all(data).expect("write");
    }
    w.finish().expect("zip").into_inner()
}

/// A tar holding a file and a symbolic link `link -> target`.
pub fn tar_with_symlink(link: &str, target: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = b"hello";
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "data.yaml", &data[..]).expect("file");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, link, target).expect("link");
    b.into_inner().expect("tar")
}
