//! The models match Ultralytics' YOLOv8 architecture: parameter counts (as Ultralytics reports
//! them for the same yaml and class count) and output layouts.
#![cfg(feature = "torch")]

use ocellus_trainer::model::{Architecture, Classifier, Detector, parameter_count};
use tch::{Device, Kind, Tensor, nn};

fn detector_params(arch: &str, nc: i64) -> i64 {
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Detector::new(&(vs.root() / "model"), &arch.parse::<Architecture>().expect("arch"), nc);
    parameter_count(&vs)
}

#[test]
fn detector_parameter_counts_match_ultralytics() {
    // From ultralytics DetectionModel("yolov8{n,s,m}.yaml", nc=...).
    assert_eq!(detector_params("yolov8n", 80), 3_157_200);
    assert_eq!(detector_params("yolov8n", 3), 3_011_433);
    assert_eq!(detector_params("yolov8s", 80), 11_166_560);
    assert_eq!(detector_params("yolov8s", 3), 11_136_761);
    assert_eq!(detector_params("yolov8m", 80), 25_902_640);
    assert_eq!(detector_params("yolov8m", 3), 25_858_057);
}

#[test]
fn classifier_parameter_counts_match_ultralytics() {
    for (arch, want) in [("yolov8n-cls", 1_442_131), ("yolov8s-cls", 5_084_579)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = Classifier::new(&(vs.root() / "model"), &arch.parse::<Architecture>().expect("arch"), 3);
        assert_eq!(parameter_count(&vs), want, "{arch}");
    }
}

#[test]
fn output_layouts() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Detector::new(&(vs.root() / "model"), &"yolov8n".parse().expect("arch"), 3);
    let x = Tensor::zeros([2, 3, 160, 160], (Kind::Float, Device::Cpu));
    let levels = m.forward_levels(&x, true);
    let shapes: Vec<Vec<i64>> = levels.iter().map(|l| l.size()).collect();
    assert_eq!(shapes, vec![vec![2, 67, 20, 20], vec![2, 67, 10, 10], vec![2, 67, 5, 5]]);
    // As Ultralytics: (1, 7, 525) for 3 classes at 160 px.
    let y = tch::no_grad(|| m.predict(&x));
    assert_eq!(y.size(), vec![2, 7, 525]);
    // Class probabilities start at the prior (about 0.01 at stride 8) and boxes are positive.
    let cls = y.narrow(1, 4, 3);
    let p = cls.max().double_value(&[]);
    assert!(p > 0.0 && p < 0.1, "{p}");
    assert!(y.narrow(1, 2, 2).min().double_value(&[]) > 0.0);

    let vs = nn::VarStore::new(Device::Cpu);
    let c = Classifier::new(&(vs.root() / "model"), &"yolov8n-cls".parse().expect("arch"), 5);
    assert_eq!(
        tch::no_grad(|| c.forward_t(&Tensor::zeros([4, 3, 64, 64], (Kind::Float, Device::Cpu)), false)).size(),
        vec![4, 5]
    );
}

#[test]
fn unsupported_tasks_are_refused_clearly() {
    let err = "yolov8n-seg".parse::<Architecture>().expect_err("seg");
    assert!(err.0.contains("not supported yet"), "{err}");
    assert!("yolov8q".parse::<Architecture>().is_err());
    assert!("resnet50".parse::<Architecture>().is_err());
}

/// A fresh model starts where Ultralytics' does (PyTorch's defaults, which it keeps): weights of
/// every convolution and of the classifier's linear layer uniform in ±1/√fan_in, batch norm
/// scale 1 and shift 0, running statistics 0 and 1, and the detect head's bias priors. tch's own
/// defaults (weights √6 times wider, batch norm scales uniform in 0..1) trained the same
/// recipe to 0.371 mAP50-95 where Ultralytics' start reached 0.710 (issue 17).
#[test]
fn fresh_weights_are_initialised_as_pytorch_and_ultralytics() {
    let check = |vs: &nn::VarStore| {
        let mut convs = 0;
        for (name, t) in vs.variables() {
            let max = t.abs().max().double_value(&[]);
            let (min, mean) = (t.min().double_value(&[]), t.mean(Kind::Double).double_value(&[]));
            if name.ends_with("bn.weight") || name.ends_with("running_var") {
                assert!(min == 1.0 && max == 1.0, "{name}: ones, got {min}..{max}");
            } else if name.ends_with("bn.bias") || name.ends_with("running_mean") {
                assert_eq!(max, 0.0, "{name}: zeros");
            } else if name.ends_with("dfl.conv.weight") {
                // The DFL's fixed projection 0..15, not a trained weight.
                assert!(!t.requires_grad(), "{name} is frozen");
            } else if t.dim() == 4 || name.ends_with("linear.weight") {
                let size = t.size();
                let fan_in: i64 = size[1..].iter().product();
                let bound = 1.0 / (fan_in as f64).sqrt();
                // Uniform: the largest of thousands of draws is within a few per cent of the bound.
                let n = t.numel() as f64;
                assert!(max <= bound && max >= bound * (1.0 - 20.0 / n), "{name}: |w| max {max}, bound {bound}");
                assert!(mean.abs() < bound / 4.0, "{name}: mean {mean}");
                convs += 1;
            }
        }
        convs
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Detector::new(&(vs.root() / "model"), &"yolov8n".parse().expect("arch"), 3);
    assert_eq!(check(&vs), 63, "yolov8n's trained convolutions (64 with the DFL's)");
    let vars = vs.variables();
    // Detect.bias_init: box bins 2.0; classes log(5 / nc / (640 / stride)^2).
    for (i, stride) in [8.0f64, 16.0, 32.0].into_iter().enumerate() {
        let box_bias = &vars[&format!("model.22.cv2.{i}.2.bias")];
        assert_eq!(box_bias.min().double_value(&[]), 2.0);
        let cls = vars[&format!("model.22.cv3.{i}.2.bias")].max().double_value(&[]);
        assert!((cls - (5.0 / 3.0 / (640.0 / stride).powi(2)).ln()).abs() < 1e-5, "class prior {cls}");
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Classifier::new(&(vs.root() / "model"), &"yolov8n-cls".parse().expect("arch"), 3);
    assert!(check(&vs) > 0);
}
