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
    /// uint8
    Uint8 = 2,
    /// int8
    Int8 = 3,
    /// int32
    Int32 = 6,
    /// int64
    Int64 = 7,
    /// float16
    Float16 = 10,
}

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
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

/// A node of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Operator type, e.g. `Conv`.
    pub op: String,
    /// Operator domain; empty for the default ONNX domain.
    pub domain: String,
    /// Unique node name.
    pub name: String,
    /// Input value names.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Attributes.
    pub attrs: Vec<Attr>,
    /// Emitted while [`Graph::keep_float`] was set: a quantisation pass leaves it in float.
    pub keep_float: bool,
}

/// The values of an initializer.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// float32 values, written as float16 in a half graph unless `exact`.
    Float {
        /// The values.
        values: Vec<f32>,
        /// Stay float32 whatever the graph's precision (e.g. `Resize` scales, quantisation
        /// scales).
        exact: bool,
    },
    /// uint8 values (zero points of unsigned activations).
    Uint8(Vec<u8>),
    /// int8 values (quantised weights, zero points).
    Int8(Vec<i8>),
    /// int32 values (quantised biases).
    Int32(Vec<i32>),
    /// int64 values (shapes, axes, split sizes).
    Int64(Vec<i64>),
}

/// A constant tensor of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    /// Value name.
    pub name: String,
    /// Shape.
    pub dims: Vec<i64>,
    /// Values, row-major.
    pub data: Data,
}

/// A graph under construction: model code emits nodes into it, passes (e.g. INT8 quantisation)
/// may rewrite it, and [`Graph::into_model`] serialises it.
#[derive(Default, Debug, Clone)]
pub struct Graph {
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Constant tensors.
    pub initializers: Vec<Initializer>,
    counter: usize,
    /// Convert float initializers to float16 when written.
    pub half: bool,
    /// Nodes emitted while set are marked [`Node::keep_float`] (e.g. a detector's final box and
    /// class convolutions and its decoding).
    pub keep_float: bool,
    /// Operator sets of other domains the graph uses (e.g. `com.microsoft`).
    pub domains: Vec<(String, i64)>,
    /// Intermediate values also exposed as graph outputs (float, shape unspecified), e.g. for
    /// calibration.
    pub extra_outputs: Vec<String>,
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

impl Initializer {
    fn encode(&self, half: bool) -> Pb {
        let mut t = Pb::default();
        for d in &self.dims {
            t.int(1, *d);
        }
        let (ty, raw): (DataType, Vec<u8>) = match &self.data {
            Data::Float { values, exact } if half && !exact => {
                (DataType::Float16, values.iter().flat_map(|x| f32_to_f16_bits(*x).to_le_bytes()).collect())
            }
            Data::Float { values, .. } => (DataType::Float, values.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::Uint8(v) => (DataType::Uint8, v.clone()),
            Data::Int8(v) => (DataType::Int8, v.iter().map(|x| *x as u8).collect()),
            Data::Int32(v) => (DataType::Int32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::Int64(v) => (DataType::Int64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        t.int(2, ty as i64);
        t.str(8, &self.name);
        t.bytes(9, &raw);
        t
    }
}

impl Node {
    fn encode(&self) -> Pb {
        let mut n = Pb::default();
        for i in &self.inputs {
            n.str(1, i);
        }
        for o in &self.outputs {
            n.str(2, o);
        }
        n.str(3, &self.name);
        n.str(4, &self.op);
        for a in &self.attrs {
            n.msg(5, &a.encode());
        }
        if !self.domain.is_empty() {
            n.str(7, &self.domain);
        }
        n
    }
}

impl Graph {
    /// A fresh value name.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// A float initializer (float16 when the graph is half).
    pub fn init_f32(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> String {
        self.init(hint, dims, Data::Float { values: data.to_vec(), exact: false })
    }

    /// A float32 initializer whatever the graph's precision (e.g. `Resize` scales).
    pub fn init_f32_exact(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> String {
        self.init(hint, dims, Data::Float { values: data.to_vec(), exact: true })
    }

    /// An int64 initializer (shapes, axes, split sizes).
    pub fn init_i64(&mut self, hint: &str, data: &[i64]) -> String {
        self.init(hint, &[data.len() as i64], Data::Int64(data.to_vec()))
    }

    /// An initializer of any type; returns its name.
    pub fn init(&mut self, hint: &str, dims: &[i64], data: Data) -> String {
        let name = self.fresh(hint);
        self.initializers.push(Initializer { name: name.clone(), dims: dims.to_vec(), data });
        name
    }

    /// The initializer named `name`.
    pub fn initializer(&self, name: &str) -> Option<&Initializer> {
        self.initializers.iter().find(|i| i.name == name)
    }

    /// A node with `outputs` outputs; returns their names.
    pub fn node_n(&mut self, op: &str, inputs: &[&str], outputs: usize, attrs: &[Attr]) -> Vec<String> {
        let outs: Vec<String> = (0..outputs).map(|_| self.fresh(op)).collect();
        let name = self.fresh(&format!("{op}_node"));
        self.nodes.push(Node {
            op: op.into(),
            domain: String::new(),
            name,
            inputs: inputs.iter().map(|i| i.to_string()).collect(),
            outputs: outs.clone(),
            attrs: attrs.to_vec(),
            keep_float: self.keep_float,
        });
        outs
    }

    /// A single-output node.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        self.node_n(op, inputs, 1, attrs).remove(0)
    }

    /// A node of another domain with named outputs (e.g. an `EPContext` node).
    pub fn custom_node(&mut self, op: &str, domain: &str, inputs: &[&str], outputs: &[&str], attrs: &[Attr]) {
        let name = self.fresh(op);
        self.nodes.push(Node {
            op: op.into(),
            domain: domain.into(),
            name,
            inputs: inputs.iter().map(|i| i.to_string()).collect(),
            outputs: outputs.iter().map(|o| o.to_string()).collect(),
            attrs: attrs.to_vec(),
            keep_float: self.keep_float,
        });
    }

    /// Renames value `from` to the graph output name `to` (an Identity node).
    pub fn output_as(&mut self, from: &str, to: &str) {
        self.nodes.push(Node {
            op: "Identity".into(),
            domain: String::new(),
            name: format!("{to}_identity"),
            inputs: vec![from.into()],
            outputs: vec![to.into()],
            attrs: Vec::new(),
            keep_float: true,
        });
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
        let value_info = |name: &str, dims: Option<&[Dim]>| {
            let mut tensor = Pb::default();
            tensor.int(1, elem);
            if let Some(dims) = dims {
                let mut shape = Pb::default();
                for d in dims {
                    let mut dim = Pb::default();
                    match d {
                        Dim::Fixed(v) => dim.int(1, *v),
                        Dim::Param(p) => dim.str(2, p),
                    }
                    shape.msg(1, &dim);
                }
                tensor.msg(2, &shape);
            }
            let mut ty = Pb::default();
            ty.msg(1, &tensor);
            let mut vi = Pb::default();
            vi.str(1, name);
            vi.msg(2, &ty);
            vi
        };
        let mut g = Pb::default();
        for n in &self.nodes {
            g.msg(1, &n.encode());
        }
        g.str(2, "ocellus");
        for t in &self.initializers {
            g.msg(5, &t.encode(self.half));
        }
        g.msg(11, &value_info(input.0, Some(input.1)));
        g.msg(12, &value_info(output.0, Some(output.1)));
        for extra in &self.extra_outputs {
            g.msg(12, &value_info(extra, None));
        }

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
