//! A restricted unpickler: it reads the pickle stream of a PyTorch checkpoint (`data.pkl`) into an
//! inert graph of values and never executes anything. Python's unpickler calls whatever callable
//! the stream names (`os.system` included); this one only recognises a fixed set of names — the
//! tensor and storage rebuild functions, plain containers, and module classes, which become inert
//! [`Node::Object`]s holding their state — and refuses any other name before reading further.
//!
//! Values live in an arena ([`Pickle::nodes`]) and refer to each other by index, so the memo's
//! shared references cost nothing (no deep copies, however often a value is referenced) and a
//! cycle cannot make the reader loop. Readers of the graph must bound their own recursion.

use std::collections::HashMap;
use std::fmt;

/// Index of a value in [`Pickle::nodes`].
pub type Id = usize;

/// Most values one pickle may create: a yolov8x checkpoint has about 60,000.
const MAX_NODES: usize = 20_000_000;
/// Most value references the reader may copy in all (call arguments, stack entries): bounds the
/// work of a stream that references one huge memoised tuple again and again.
const MAX_COPIED: usize = 50_000_000;
/// Most values [`Pickle::to_json`] emits for one call (shared references repeat values).
const MAX_JSON_VALUES: usize = 100_000;

/// Why a pickle was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    /// The stream names a callable or class outside the allowed set.
    #[error(
        "the pickle references `{0}`, which a PyTorch checkpoint of tensors, containers and modules never needs; refused without running it"
    )]
    Refused(String),
    /// An opcode this reader does not accept (legacy text protocol, extension registry, out-of-band buffers).
    #[error("unsupported pickle opcode 0x{0:02x} at byte {1}")]
    Opcode(u8, usize),
    /// The stream ended early.
    #[error("the pickle is truncated (at byte {0})")]
    Truncated(usize),
    /// A structural error: wrong operand types, an empty stack, a missing memo entry, a limit.
    #[error("malformed pickle at byte {0}: {1}")]
    Malformed(usize, String),
}

/// A module-qualified name (`module.name`), as the stream spells it; never resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Global {
    /// Module, e.g. `torch._utils`.
    pub module: String,
    /// Name in it, e.g. `_rebuild_tensor_v2`.
    pub name: String,
}

impl fmt::Display for Global {
    /// `module.name`, control characters escaped, at most 200 characters: the names come from the
    /// file and end up in error messages and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = format!("{}.{}", self.module, self.name);
        let shown: String = full.chars().take(200).flat_map(char::escape_default).collect();
        f.write_str(&shown)?;
        if full.chars().count() > 200 { f.write_str("…") } else { Ok(()) }
    }
}

/// Element type of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// float32.
    F32,
    /// float64.
    F64,
    /// int64.
    I64,
    /// int32.
    I32,
    /// int16.
    I16,
    /// int8.
    I8,
    /// uint8 (also untyped storages).
    U8,
    /// bool.
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The dtype of a `torch.<Name>Storage` class.
    fn of_storage(name: &str) -> Option<DType> {
        Some(match name {
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
}

/// A storage of the archive (`<archive>/data/<key>`), as a persistent id names it.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// Entry name under `data/`.
    pub key: String,
    /// Element type.
    pub dtype: DType,
    /// Elements it claims to hold (checked against the entry's size when read).
    pub numel: u64,
}

/// A tensor: a strided view on a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// Its storage.
    pub storage: StorageRef,
    /// First element, in elements.
    pub offset: u64,
    /// Shape.
    pub size: Vec<u64>,
    /// Strides, in elements.
    pub stride: Vec<u64>,
}

/// One value of the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `None`.
    None,
    /// `True`/`False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A larger integer, little-endian two's complement (kept, never interpreted).
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Id>),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A dict or `OrderedDict`, in insertion order.
    Dict(Vec<(Id, Id)>),
    /// A set or frozenset.
    Set(Vec<Id>),
    /// A name the stream pushed (a class, or a constant such as `torch.float16`).
    Global(Global),
    /// An instance of an allowed class: its class, constructor arguments and `BUILD` state.
    Object {
        /// Its class.
        class: Global,
        /// Constructor arguments.
        args: Vec<Id>,
        /// The state `BUILD` gave it (a module's `__dict__`).
        state: Option<Id>,
    },
    /// A storage, from a persistent id.
    Storage(StorageRef),
    /// A tensor.
    Tensor(TensorRef),
    /// The stack marker (never in a finished graph).
    Mark,
}

/// A parsed pickle.
#[derive(Debug, Default)]
pub struct Pickle {
    /// Every value; [`Id`]s index it.
    pub nodes: Vec<Node>,
    /// The value the stream returned.
    pub root: Id,
}

impl Pickle {
    /// The node `id` (a `None` node for an out-of-range index, which the reader never makes).
    pub fn get(&self, id: Id) -> &Node {
        self.nodes.get(id).unwrap_or(&Node::None)
    }

    /// The value under string key `key` of dict `id`.
    pub fn dict_get(&self, id: Id, key: &str) -> Option<Id> {
        match self.get(id) {
            // The last of equal keys, as the Python dict the same SETITEMs build keeps.
            Node::Dict(items) => items.iter().rev().find(|(k, _)| self.str(*k) == Some(key)).map(|(_, v)| *v),
            _ => None,
        }
    }

    /// The string `id` is, if it is one.
    pub fn str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer `id` is, if it is one (bools count as 0/1, as in Python).
    pub fn int(&self, id: Id) -> Option<i64> {
        match self.get(id) {
            Node::Int(i) => Some(*i),
            Node::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// Converts a value to JSON for metadata (dicts with string or integer keys, lists, scalars),
    /// `depth` levels deep; anything else (tensors, objects) becomes `null`.
    pub fn to_json(&self, id: Id, depth: usize) -> serde_json::Value {
        let mut budget = MAX_JSON_VALUES;
        self.to_json_within(id, depth, &mut budget)
    }

    /// [`Pickle::to_json`] emitting at most `budget` values (shared references would otherwise
    /// expand a small stream exponentially); past it, `null`.
    fn to_json_within(&self, id: Id, depth: usize, budget: &mut usize) -> serde_json::Value {
        use serde_json::Value as J;
        if depth == 0 || *budget == 0 {
            return J::Null;
        }
        *budget -= 1;
        match self.get(id) {
            Node::Bool(b) => J::Bool(*b),
            Node::Int(i) => J::from(*i),
            Node::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Node::Str(s) => J::String(s.clone()),
            Node::List(v) | Node::Tuple(v) | Node::Set(v) => {
                J::Array(v.iter().map(|i| self.to_json_within(*i, depth - 1, budget)).collect())
            }
            Node::Dict(items) => J::Object(
                items
                    .iter()
                    .filter_map(|(k, v)| {
                        let key = match self.get(*k) {
                            Node::Str(s) => s.clone(),
                            Node::Int(i) => i.to_string(),
                            _ => return None,
                        };
                        Some((key, self.to_json_within(*v, depth - 1, budget)))
                    })
                    .collect(),
            ),
            _ => J::Null,
        }
    }
}

/// Callables a `REDUCE` may name, and what the reader makes of them instead of calling them.
fn reduce_kind(g: &Global) -> Option<Reduce> {
    Some(match (g.module.as_str(), g.name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Reduce::Tensor,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Reduce::First,
        ("torch._tensor", "_rebuild_from_type_v2") => Reduce::FromType,
        ("collections", "OrderedDict") => Reduce::Dict,
        ("builtins" | "__builtin__", "set" | "frozenset") => Reduce::Set,
        ("torch", "Size") => Reduce::First,
        ("_codecs", "encode") => Reduce::Latin1,
        ("copyreg" | "copy_reg", "_reconstructor") => Reduce::Reconstructor,
        // `pathlib._local` is where Python 3.13 pickles paths from.
        ("pathlib" | "pathlib._local", "Path" | "PosixPath" | "WindowsPath" | "PurePosixPath" | "PureWindowsPath") => {
            Reduce::Path
        }
        _ if is_class(g) || is_value_global(g) => Reduce::Object,
        _ => return None,
    })
}

/// What a `REDUCE` of an allowed callable produces.
#[derive(Clone, Copy)]
enum Reduce {
    Tensor,
    First,
    FromType,
    Dict,
    Set,
    Latin1,
    Reconstructor,
    Path,
    Object,
}

/// Classes that become inert objects: PyTorch's and Ultralytics' modules, namespaces, NumPy's
/// scalar and array wrappers (Ultralytics' training metrics may hold NumPy floats).
fn is_class(g: &Global) -> bool {
    let (m, n) = (g.module.as_str(), g.name.as_str());
    let class_like = n.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    (class_like && (m.starts_with("torch.nn.modules.") || m == "torch.nn.parameter" || m.starts_with("ultralytics.")))
        || matches!(
            (m, n),
            ("argparse", "Namespace")
                | ("types", "SimpleNamespace")
                | ("builtins" | "__builtin__", "object")
                | ("numpy", "dtype" | "ndarray")
                | ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar" | "_reconstruct")
        )
}

/// Names that are plain values: `torch.float16` and friends, storage classes, `torch.device`.
fn is_value_global(g: &Global) -> bool {
    g.module == "torch"
        && (DType::of_storage(&g.name).is_some()
            || g.name == "device"
            || matches!(
                g.name.as_str(),
                "float16"
                    | "bfloat16"
                    | "float32"
                    | "float64"
                    | "half"
                    | "float"
                    | "double"
                    | "int64"
                    | "int32"
                    | "int16"
                    | "int8"
                    | "uint8"
                    | "bool"
                    | "long"
                    | "int"
            ))
}

fn allowed(g: &Global) -> bool {
    reduce_kind(g).is_some()
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    copied: usize,
}

/// Parses a pickle stream (protocols 2 to 5, binary opcodes) into an inert graph.
pub fn parse(data: &[u8]) -> Result<Pickle, PickleError> {
    let mut r = Reader {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copied: 0,
    };
    let root = r.run()?;
    Ok(Pickle { nodes: r.nodes, root })
}

impl Reader<'_> {
    fn bad<T>(&self, msg: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError::Malformed(self.pos, msg.into()))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len()).ok_or(PickleError::Truncated(self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le(&mut self, n: usize) -> Result<u64, PickleError> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    }

    fn len(&mut self, n: usize) -> Result<usize, PickleError> {
        let l = self.le(n)?;
        usize::try_from(l).ok().filter(|l| *l <= self.data.len() - self.pos).ok_or(PickleError::Truncated(self.pos))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|b| *b == b'\n').ok_or(PickleError::Truncated(self.pos))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<String, PickleError> {
        let at = self.pos;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| PickleError::Malformed(at, "a string is not UTF-8".into()))
    }

    fn add(&mut self, n: Node) -> Result<Id, PickleError> {
        if self.nodes.len() >= MAX_NODES {
            return self.bad(format!("more than {MAX_NODES} values"));
        }
        self.nodes.push(n);
        Ok(self.nodes.len() - 1)
    }

    fn push(&mut self, n: Node) -> Result<(), PickleError> {
        let id = self.add(n)?;
        self.stack.push(id);
        Ok(())
    }

    /// Pushes an existing value again (memo, DUP), within the stack's bound.
    fn push_id(&mut self, id: Id) -> Result<(), PickleError> {
        if self.stack.len() >= MAX_NODES {
            return self.bad(format!("a stack of more than {MAX_NODES} values"));
        }
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.bad("pop from an empty stack");
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self) -> Result<Id, PickleError> {
        match self.stack.last() {
            Some(id) if self.stack.len() > self.marks.last().copied().unwrap_or(0) => Ok(*id),
            _ => self.bad("empty stack"),
        }
    }

    /// Pops everything above the last mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let Some(m) = self.marks.pop() else { return self.bad("no mark") };
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let id = self.top()?;
        if self.memo.len() >= MAX_NODES {
            return self.bad("memo too large");
        }
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(id) => {
                let id = *id;
                self.push_id(id)
            }
            None => self.bad(format!("memo key {key} is not set")),
        }
    }

    fn global(&mut self, module: String, name: String) -> Result<(), PickleError> {
        let g = Global { module, name };
        if !allowed(&g) {
            return Err(PickleError::Refused(g.to_string()));
        }
        self.push(Node::Global(g))
    }

    /// The elements of a tuple (or, for `OrderedDict` and `set` arguments, a list), counted
    /// against [`MAX_COPIED`].
    fn items(&mut self, id: Id) -> Result<Vec<Id>, PickleError> {
        let v = match &self.nodes[id] {
            Node::Tuple(v) | Node::List(v) => v.clone(),
            _ => return self.bad("expected a tuple"),
        };
        self.copied += v.len();
        if self.copied > MAX_COPIED {
            return self.bad(format!("more than {MAX_COPIED} values copied"));
        }
        Ok(v)
    }

    /// The arguments of a call: a tuple, as CPython requires.
    fn args(&mut self, id: Id) -> Result<Vec<Id>, PickleError> {
        match &self.nodes[id] {
            Node::Tuple(_) => self.items(id),
            _ => self.bad("call arguments must be a tuple"),
        }
    }

    fn run(&mut self) -> Result<Id, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if !(2..=5).contains(&proto) {
                        return self.bad(format!("pickle protocol {proto}; PyTorch writes 2 or later"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.push_id(t)?;
                }
                b'N' => self.push(Node::None)?,
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                b'J' => {
                    let v = self.le(4)? as u32 as i32;
                    self.push(Node::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = self.le(2)?;
                    self.push(Node::Int(v as i64))?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.len(1)? } else { self.len(4)? };
                    let b = self.take(n)?.to_vec();
                    let node = if n <= 8 {
                        let neg = b.last().is_some_and(|x| x & 0x80 != 0);
                        let mut v: i64 = if neg { -1 } else { 0 };
                        for x in b.iter().rev() {
                            v = (v << 8) | i64::from(*x);
                        }
                        Node::Int(v)
                    } else {
                        Node::BigInt(b)
                    };
                    self.push(node)?;
                }
                b'G' => {
                    let b: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
                    self.push(Node::Float(f64::from_be_bytes(b)))?;
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        0x8c => self.len(1)?,
                        b'X' => self.len(4)?,
                        _ => self.len(8)?,
                    };
                    let s = self.utf8(n)?;
                    self.push(Node::Str(s))?;
                }
                b'T' | b'U' => {
                    // Python 2 byte strings: latin-1 text, as Python 3 reads them by default.
                    let n = if op == b'U' { self.len(1)? } else { self.len(4)? };
                    let s = self.take(n)?.iter().map(|b| char::from(*b)).collect();
                    self.push(Node::Str(s))?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.len(1)?,
                        b'B' => self.len(4)?,
                        _ => self.len(8)?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b))?;
                }
                b']' => self.push(Node::List(vec![]))?,
                b'}' => self.push(Node::Dict(vec![]))?,
                b')' => self.push(Node::Tuple(vec![]))?,
                0x8f => self.push(Node::Set(vec![]))?,
                b'l' => {
                    let v = self.pop_mark()?;
                    self.push(Node::List(v))?;
                }
                b't' => {
                    let v = self.pop_mark()?;
                    self.push(Node::Tuple(v))?;
                }
                0x91 => {
                    let v = self.pop_mark()?;
                    self.push(Node::Set(v))?;
                }
                b'd' => {
                    let v = self.pop_mark()?;
                    if v.len() % 2 != 0 {
                        return self.bad("odd number of dict items");
                    }
                    self.push(Node::Dict(v.chunks(2).map(|c| (c[0], c[1])).collect()))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        v.push(self.pop()?);
                    }
                    v.reverse();
                    self.push(Node::Tuple(v))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    match &mut self.nodes[l] {
                        Node::List(items) => items.push(v),
                        _ => return self.bad("APPEND to a non-list"),
                    }
                }
                b'e' => {
                    let v = self.pop_mark()?;
                    let l = self.top()?;
                    match &mut self.nodes[l] {
                        Node::List(items) => items.extend(v),
                        _ => return self.bad("APPENDS to a non-list"),
                    }
                }
                0x90 => {
                    let v = self.pop_mark()?;
                    let s = self.top()?;
                    match &mut self.nodes[s] {
                        Node::Set(items) => items.extend(v),
                        _ => return self.bad("ADDITEMS to a non-set"),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let v = self.pop_mark()?;
                    if v.len() % 2 != 0 {
                        return self.bad("odd number of dict items");
                    }
                    self.set_items(v)?;
                }
                b'q' => {
                    let k = self.le(1)?;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.le(4)?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.le(1)?;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.le(4)?;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let n = self.pop()?;
                    let m = self.pop()?;
                    match (&self.nodes[m], &self.nodes[n]) {
                        (Node::Str(m), Node::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(m, n)?;
                        }
                        _ => return self.bad("STACK_GLOBAL needs two strings"),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.storage(pid)?;
                    self.push(Node::Storage(storage))?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let node = self.reduce(func, args)?;
                    match node {
                        Ok(n) => self.push(n)?,
                        Err(id) => self.push_id(id)?,
                    }
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // keyword arguments: kept out of the graph
                    }
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let class = match &self.nodes[cls] {
                        Node::Global(g) if is_class(g) => g.clone(),
                        Node::Global(g) => return Err(PickleError::Refused(g.to_string())),
                        _ => return self.bad("NEWOBJ of a non-class"),
                    };
                    let args = self.args(args)?;
                    self.push(Node::Object { class, args, state: None })?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    match &mut self.nodes[obj] {
                        Node::Object { state: s, .. } => *s = Some(state),
                        // `_rebuild_parameter_with_state` and tensor subclasses: the state adds nothing we read.
                        Node::Tensor(_) => {}
                        _ => return self.bad("BUILD of a non-object"),
                    }
                }
                other => return Err(PickleError::Opcode(other, at)),
            }
        }
    }

    fn set_items(&mut self, kv: Vec<Id>) -> Result<(), PickleError> {
        let d = self.top()?;
        match &mut self.nodes[d] {
            Node::Dict(items) => {
                for c in kv.chunks(2) {
                    // Equal keys stay in order; readers take the last, as Python's dict keeps.
                    items.push((c[0], c[1]));
                }
                Ok(())
            }
            _ => self.bad("SETITEM on a non-dict"),
        }
    }

    /// A torch persistent id: `('storage', <torch.XStorage>, key, location, numel)`.
    fn storage(&mut self, pid: Id) -> Result<StorageRef, PickleError> {
        let t = self.items(pid)?;
        let field = |i: usize| t.get(i).map(|id| &self.nodes[*id]);
        match (field(0), field(1), field(2), field(4)) {
            (Some(Node::Str(tag)), Some(Node::Global(g)), Some(Node::Str(key)), Some(Node::Int(numel)))
                if tag == "storage" && t.len() == 5 =>
            {
                let dtype = DType::of_storage(&g.name)
                    .filter(|_| g.module == "torch")
                    .ok_or_else(|| PickleError::Malformed(self.pos, format!("unknown storage type {g}")))?;
                let numel =
                    u64::try_from(*numel).map_err(|_| PickleError::Malformed(self.pos, "negative size".into()))?;
                if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
                    return self.bad(format!("bad storage key {key:?}"));
                }
                Ok(StorageRef { key: key.clone(), dtype, numel })
            }
            _ => self.bad("a persistent id that is not a torch storage"),
        }
    }

    /// What `func(*args)` would have built, or `Err(id)` when the result is an existing value.
    fn reduce(&mut self, func: Id, args: Id) -> Result<Result<Node, Id>, PickleError> {
        self.reduce_at(func, args, false)
    }

    /// [`Reader::reduce`]; `nested` inside `_rebuild_from_type_v2`, which may not nest again.
    fn reduce_at(&mut self, func: Id, args: Id, nested: bool) -> Result<Result<Node, Id>, PickleError> {
        let g = match &self.nodes[func] {
            Node::Global(g) => g.clone(),
            _ => return self.bad("REDUCE of a non-callable"),
        };
        let kind = reduce_kind(&g).ok_or_else(|| PickleError::Refused(g.to_string()))?;
        let a = self.args(args)?;
        let arg = |i: usize| a.get(i).copied();
        match kind {
            Reduce::Tensor => Ok(Ok(Node::Tensor(self.tensor(&a)?))),
            Reduce::First => arg(0).map(Err).map(Ok).unwrap_or_else(|| self.bad(format!("{g} without arguments"))),
            Reduce::FromType => {
                // `_rebuild_from_type_v2(func, type, args, state)`: rebuild with `func(*args)`.
                match (arg(0), arg(2)) {
                    _ if nested => self.bad(format!("{g} nested in itself")),
                    (Some(f), Some(inner)) => self.reduce_at(f, inner, true),
                    _ => self.bad(format!("{g} needs a function and its arguments")),
                }
            }
            Reduce::Dict => {
                let mut items = vec![];
                if let Some(pairs) = arg(0) {
                    for p in self.items(pairs)? {
                        match self.items(p)?.as_slice() {
                            [k, v] => items.push((*k, *v)),
                            _ => return self.bad("OrderedDict items must be pairs"),
                        }
                    }
                }
                Ok(Ok(Node::Dict(items)))
            }
            Reduce::Set => Ok(Ok(Node::Set(match arg(0) {
                Some(l) => self.items(l)?,
                None => vec![],
            }))),
            Reduce::Latin1 => match arg(0).map(|i| &self.nodes[i]) {
                Some(Node::Str(s)) => Ok(Ok(Node::Bytes(s.chars().map(|c| c as u32 as u8).collect()))),
                _ => self.bad("_codecs.encode of a non-string"),
            },
            Reduce::Reconstructor => match arg(0).map(|i| &self.nodes[i]) {
                Some(Node::Global(c)) if is_class(c) => {
                    Ok(Ok(Node::Object { class: c.clone(), args: vec![], state: None }))
                }
                Some(Node::Global(c)) => Err(PickleError::Refused(c.to_string())),
                _ => self.bad("copyreg._reconstructor of a non-class"),
            },
            Reduce::Path => {
                let parts: Vec<&str> = a
                    .iter()
                    .filter_map(|i| self.nodes.get(*i))
                    .filter_map(|n| match n {
                        Node::Str(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect();
                Ok(Ok(Node::Str(parts.join("/"))))
            }
            Reduce::Object => Ok(Ok(Node::Object { class: g, args: a, state: None })),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
    fn tensor(&mut self, a: &[Id]) -> Result<TensorRef, PickleError> {
        let storage = match a.first().map(|i| &self.nodes[*i]) {
            Some(Node::Storage(s)) => s.clone(),
            _ => return self.bad("a tensor without a storage"),
        };
        let (Some(size), Some(stride)) = (a.get(2), a.get(3)) else {
            return self.bad("a tensor without size or stride");
        };
        let (size, stride) = (self.items(*size)?, self.items(*stride)?);
        let int = |id: Id| match &self.nodes[id] {
            Node::Int(v) if *v >= 0 => Ok(*v as u64),
            _ => Err(PickleError::Malformed(
                self.pos,
                "tensor offsets, sizes and strides must be non-negative integers".into(),
            )),
        };
        let offset = a.get(1).map(|i| int(*i)).transpose()?.unwrap_or(0);
        let size = size.into_iter().map(int).collect::<Result<Vec<u64>, _>>()?;
        let stride = stride.into_iter().map(int).collect::<Result<Vec<u64>, _>>()?;
        if size.len() != stride.len() {
            return self.bad("tensor size and stride differ in length");
        }
        Ok(TensorRef { storage, offset, size, stride })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps({'a': [1, 2.5, 'x'], 'b': (True, None)}, protocol=2)`.
    const PLAIN: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04\x88N\x86q\x05u.";

    #[test]
    fn reads_plain_containers() {
        let p = parse(PLAIN).expect("parse");
        assert_eq!(p.to_json(p.root, 8), serde_json::json!({"a": [1, 2.5, "x"], "b": [true, null]}));
    }

    #[test]
    fn refuses_os_system_by_name_before_anything_else() {
        // `cos\nsystem\n(S'echo pwned'\ntR.`: the classic payload, protocol 0 GLOBAL.
        let evil = b"\x80\x02cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
        assert_eq!(parse(evil).expect_err("refused"), PickleError::Refused("os.system".into()));
        // The same through STACK_GLOBAL (protocol 4).
        let evil4 = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.";
        assert_eq!(parse(evil4).expect_err("refused"), PickleError::Refused("builtins.eval".into()));
        // A module class is fine as NEWOBJ, but not a function from an allowed module.
        let f = b"\x80\x02cultralytics.utils.downloads\nsafe_download\n)R.";
        assert_eq!(
            parse(f).expect_err("refused"),
            PickleError::Refused("ultralytics.utils.downloads.safe_download".into())
        );
    }

    #[test]
    fn refuses_truncated_and_malformed_streams() {
        for cut in 1..PLAIN.len() - 1 {
            assert!(parse(&PLAIN[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(parse(b"\x80\x02h\x07."), Err(PickleError::Malformed(_, m)) if m.contains("memo")));
        assert!(matches!(parse(b"\x80\x02a."), Err(PickleError::Malformed(..))));
        // A length far past the end is "truncated", not an allocation.
        assert!(matches!(parse(b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\x7f"), Err(PickleError::Truncated(_))));
        // Protocol 0 text opcodes are not PyTorch's.
        assert!(matches!(parse(b"I1\n."), Err(PickleError::Opcode(b'I', 0))));
    }

    #[test]
    fn calls_take_tuples_and_rebuilds_do_not_nest() {
        // L = [_rebuild_from_type_v2, None, L]; _rebuild_from_type_v2(*L): arguments must be a tuple.
        let list_args = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\nq\x00]q\x01(h\x00Nh\x01eR.";
        assert!(matches!(parse(list_args), Err(PickleError::Malformed(_, m)) if m.contains("tuple")));
        // _rebuild_from_type_v2(_rebuild_from_type_v2, None, (…), None) → refused, no recursion.
        let nested = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\nq\x00h\x00(h\x00N(h\x00N)NtNtR.";
        assert!(matches!(parse(nested), Err(PickleError::Malformed(_, m)) if m.contains("nested")));
        // A name from the file is shown escaped.
        let weird = b"\x80\x02cos\nsys\x1btem\n.";
        assert!(matches!(parse(weird), Err(PickleError::Refused(n)) if n == "os.sys\\u{1b}tem"));
    }

    #[test]
    fn shared_references_are_not_copied() {
        // [l, l, l, ...] of one memoised list, many times: one node each reference, no copy.
        let mut s = b"\x80\x02]q\x00(K\x01K\x02e]q\x01(".to_vec();
        for _ in 0..1000 {
            s.extend_from_slice(b"h\x00");
        }
        s.extend_from_slice(b"e.");
        let p = parse(&s).expect("parse");
        assert!(p.nodes.len() < 10, "{} nodes", p.nodes.len());
    }
}
