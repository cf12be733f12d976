//! The CPU's 8-bit integer instructions, which decide what an INT8 model gains on CPU: ONNX
//! Runtime's integer kernels use AMX, AVX-512 VNNI or AVX-VNNI where present, plain AVX2
//! otherwise (then INT8 gains little over float), and Arm's dot-product / i8mm extensions.
//! Read from `/proc/cpuinfo`'s flags (what the kernel lets processes use, which for AMX also
//! means the OS enabled it), reported at start-up and in the model metadata.

use std::fmt;

/// INT8-relevant instruction sets, best first.
const KNOWN: [(&str, &str); 6] = [
    ("amx_int8", "amx-int8"),
    ("avx512_vnni", "avx512-vnni"),
    ("avx_vnni", "avx-vnni"),
    ("i8mm", "arm-i8mm"),
    ("asimddp", "arm-dotprod"),
    ("avx2", "avx2"),
];

/// What this CPU offers INT8 kernels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Int8Support {
    /// Instruction sets found, best first (names as in [`KNOWN`]'s second column).
    pub instructions: Vec<&'static str>,
}

impl Int8Support {
    /// This machine's, from `/proc/cpuinfo` (empty where it cannot be read).
    pub fn detect() -> Int8Support {
        std::fs::read_to_string("/proc/cpuinfo").map(|t| Int8Support::from_cpuinfo(&t)).unwrap_or_default()
    }

    /// Parses the first `flags` (x86) or `Features` (Arm) line of a `/proc/cpuinfo`.
    pub fn from_cpuinfo(text: &str) -> Int8Support {
        let flags: Vec<&str> = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                matches!(k.trim(), "flags" | "Features").then_some(v)
            })
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default();
        Int8Support { instructions: KNOWN.iter().filter(|(f, _)| flags.contains(f)).map(|(_, n)| *n).collect() }
    }

    /// Whether integer dot-product instructions (VNNI, AMX, Arm dot product) are present:
    /// without them an INT8 model runs at about float speed.
    pub fn accelerated(&self) -> bool {
        self.instructions.iter().any(|i| *i != "avx2")
    }
}

impl fmt::Display for Int8Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.instructions.is_empty() { f.write_str("none") } else { f.write_str(&self.instructions.join(",")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_x86_and_arm_flags() {
        let x86 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile amx_int8 avx_vnni\n\
                   processor\t: 1\nflags\t\t: fpu\n";
        let s = Int8Support::from_cpuinfo(x86);
        assert_eq!(s.instructions, ["amx-int8", "avx512-vnni", "avx-vnni", "avx2"]);
        assert!(s.accelerated());
        let old = Int8Support::from_cpuinfo("flags : fpu sse4_2 avx2\n");
        assert_eq!((old.to_string(), old.accelerated()), ("avx2".into(), false));
        let arm = Int8Support::from_cpuinfo("Features\t: fp asimd asimddp i8mm\n");
        assert_eq!(arm.to_string(), "arm-i8mm,arm-dotprod");
        assert_eq!(Int8Support::from_cpuinfo("").to_string(), "none");
    }
}
