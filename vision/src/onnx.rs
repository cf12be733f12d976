//! A small ONNX writer (shared by the trainer's export and the predictor's TensorRT wrapper): the protobuf wire format of the `ModelProto` subset an inference graph
//! needs (nodes, float/int64 initializers, typed inputs/outputs, opset imports, metadata), and
//! a graph builder the model code emits its layers into. Field numbers are those of `onnx.proto`.

/// Protobuf wire-format encoder.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    fn int(&mut self, field: u32, v: i64) {
        self.key(field, 0);
        self.varint(v as u64);
    }
    fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn msg(&mut self, field: u32, m: &Pb) {
        self.bytes(field, &m.0);
    }
}

/// `TensorProto.DataType` values used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// float32
    Float = 1,
    /// int64
    Int64 = 7,
    /// float16
    Float16 = 10,
}

/// A node attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    /// `i`
    Int(&'static str, i64),
    /// `f`
    Float(&'static str, f32),
    /// `ints`
    Ints(&'static str, Vec<i64>),
    /// `s`
    Str(&'static str, &'static str),
    /// `s`, owned
    Text(&'static str, String),
}

impl Attr {
    fn encode(&self) -> Pb {
        let mut a = Pb::default();
        match self {
            Attr::Int(n, v) => {
                a.str(1, n);
                a.int(3, *v);
                a.int(20, 2);
            }
            Attr::Float(n, v) => {
                a.str(1, n);
                a.float(2, *v);
                a.int(20, 1);
            }
            Attr::Ints(n, vs) => {
                a.str(1, n);
                for v in vs {
                    a.int(8, *v);
                }
                a.int(20, 7);
            }
            Attr::Str(n, s) => {
                a.str(1, n);
                a.str(4, s);
                a.int(20, 3);
            }
            Attr::Text(n, s) => {
                a.str(1, n);
                a.str(4, s);
                a.int(20, 3);
            }
        }
        a
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone)]
pub enum Dim {
    /// Fixed size.
    Fixed(i64),
    /// Symbolic (dynamic) size.
    Param(&'static str),
}

/// A graph under construction.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<Pb>,
    initializers: Vec<Pb>,
    counter: usize,
    /// Convert float initializers to float16 when written.
    pub half: bool,
    /// Operator sets of other domains the graph uses (e.g. `com.microsoft`).
    pub domains: Vec<(String, i64)>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.nodes.len())
            .field("initializers", &self.initializers.len())
            .finish()
    }
}

fn f32_to_f16_bits(x: f32) -> u16 {
    // Round-to-nearest-even conversion of IEEE binary32 to binary16.
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let mant = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut v = m >> shift;
        if rest > half || (rest == half && v & 1 == 1) {
            v += 1;
        }
        return sign | v as u16;
    }
    let mut v = ((e as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && v & 1 == 1) {
        v += 1;
    }
    sign | v as u16
}

impl Graph {
    /// A fresh value name.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// A float initializer (float16 when the graph is half).
    pub fn init_f32(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> String {
        self.init_float(hint, dims, data, self.half)
    }

    /// A float32 initializer whatever the graph's precision (e.g. `Resize` scales).
    pub fn init_f32_exact(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> String {
        self.init_float(hint, dims, data, false)
    }

    fn init_float(&mut self, hint: &str, dims: &[i64], data: &[f32], half: bool) -> String {
        let name = self.fresh(hint);
        let mut t = Pb::default();
        for d in dims {
            t.int(1, *d);
        }
        if half {
            t.int(2, DataType::Float16 as i64);
            let raw: Vec<u8> = data.iter().flat_map(|x| f32_to_f16_bits(*x).to_le_bytes()).collect();
            t.str(8, &name);
            t.bytes(9, &raw);
        } else {
            t.int(2, DataType::Float as i64);
            let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            t.str(8, &name);
            t.bytes(9, &raw);
        }
        self.initializers.push(t);
        name
    }

    /// An int64 initializer (shapes, axes, split sizes).
    pub fn init_i64(&mut self, hint: &str, data: &[i64]) -> String {
        let name = self.fresh(hint);
        let mut t = Pb::default();
        t.int(1, data.len() as i64);
        t.int(2, DataType::Int64 as i64);
        t.str(8, &name);
        let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        t.bytes(9, &raw);
        self.initializers.push(t);
        name
    }

    /// A node with `outputs` outputs; returns their names.
    pub fn node_n(&mut self, op: &str, inputs: &[&str], outputs: usize, attrs: &[Attr]) -> Vec<String> {
        let outs: Vec<String> = (0..outputs).map(|_| self.fresh(op)).collect();
        let mut n = Pb::default();
        for i in inputs {
            n.str(1, i);
        }
        for o in &outs {
            n.str(2, o);
        }
        n.str(3, &self.fresh(&format!("{op}_node")));
        n.str(4, op);
        for a in attrs {
            n.msg(5, &a.encode());
        }
        self.nodes.push(n);
        outs
    }

    /// A single-output node.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        self.node_n(op, inputs, 1, attrs).remove(0)
    }

    /// A node of another domain with named outputs (e.g. an `EPContext` node).
    pub fn custom_node(&mut self, op: &str, domain: &str, inputs: &[&str], outputs: &[&str], attrs: &[Attr]) {
        let mut n = Pb::default();
        for i in inputs {
            n.str(1, i);
        }
        for o in outputs {
            n.str(2, o);
        }
        n.str(3, &self.fresh(op));
        n.str(4, op);
        for a in attrs {
            n.msg(5, &a.encode());
        }
        n.str(7, domain);
        self.nodes.push(n);
    }

    /// Renames value `from` to the graph output name `to` (an Identity node).
    pub fn output_as(&mut self, from: &str, to: &str) {
        let mut n = Pb::default();
        n.str(1, from);
        n.str(2, to);
        n.str(3, &format!("{to}_identity"));
        n.str(4, "Identity");
        self.nodes.push(n);
    }

    /// Serialises a `ModelProto`.
    pub fn into_model(
        self,
        input: (&str, &[Dim]),
        output: (&str, &[Dim]),
        opset: i64,
        metadata: &[(String, String)],
    ) -> Vec<u8> {
        let elem = if self.half { DataType::Float16 } else { DataType::Float } as i64;
        let value_info = |name: &str, dims: &[Dim]| {
            let mut shape = Pb::default();
            for d in dims {
                let mut dim = Pb::default();
                match d {
                    Dim::Fixed(v) => dim.int(1, *v),
                    Dim::Param(p) => dim.str(2, p),
                }
                shape.msg(1, &dim);
            }
            let mut tensor = Pb::default();
            tensor.int(1, elem);
            tensor.msg(2, &shape);
            let mut ty = Pb::default();
            ty.msg(1, &tensor);
            let mut vi = Pb::default();
            vi.str(1, name);
            vi.msg(2, &ty);
            vi
        };
        let mut g = Pb::default();
        for n in &self.nodes {
            g.msg(1, n);
        }
        g.str(2, "ocellus");
        for t in &self.initializers {
            g.msg(5, t);
        }
        g.msg(11, &value_info(input.0, input.1));
        g.msg(12, &value_info(output.0, output.1));

        let mut m = Pb::default();
        // IR version 8 goes with opsets up to 18; 9 and 10 with the newer ones.
        m.int(
            1,
            if opset <= 18 {
                8
            } else if opset <= 20 {
                9
            } else {
                10
            },
        );
        m.str(2, "ocellus");
        m.str(3, env!("CARGO_PKG_VERSION"));
        m.msg(7, &g);
        let mut os = Pb::default();
        os.str(1, "");
        os.int(2, opset);
        m.msg(8, &os);
        for (domain, version) in &self.domains {
            let mut os = Pb::default();
            os.str(1, domain);
            os.int(2, *version);
            m.msg(8, &os);
        }
        for (k, v) in metadata {
            let mut e = Pb::default();
            e.str(1, k);
            e.str(2, v);
            m.msg(14, &e);
        }
        m.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_half_floats() {
        let mut p = Pb::default();
        p.varint(300);
        assert_eq!(p.0, vec![0xac, 0x02]);
        let mut p = Pb::default();
        p.int(1, -1);
        assert_eq!(p.0.len(), 11, "negative int64 is a 10-byte varint");
        for (x, bits) in [
            (0.0f32, 0u16),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (1e-8, 0),
            (6.0e-5, 0x03ef),
            (f32::INFINITY, 0x7c00),
        ] {
            assert_eq!(f32_to_f16_bits(x), bits, "{x}");
        }
    }
}
