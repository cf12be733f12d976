//! Python literals (`str()` of dicts, lists, tuples, strings, numbers, booleans and `None`), as
//! Ultralytics writes its ONNX metadata values: `{0: 'person', 1: "it's"}`, `[640, 640]`,
//! `{'batch': 1, 'nms': True}`. What Python's `ast.literal_eval` accepts of that subset, and
//! nothing is evaluated. Dicts become JSON objects with their keys as strings; tuples arrays.

use serde_json::{Map, Number, Value};

/// Deepest nesting accepted.
const MAX_DEPTH: usize = 32;

/// Parses one literal; the whole input must be consumed (surrounding whitespace aside).
pub fn parse(s: &str) -> Result<Value, String> {
    let mut p = Parser { s: s.as_bytes(), pos: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.pos != p.s.len() {
        return Err(format!("unexpected {:?} at {}", p.rest(), p.pos));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.s[self.pos..(self.pos + 12).min(self.s.len())]).into_owned()
    }

    fn ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("nested too deep".into());
        }
        self.ws();
        match self.s.get(self.pos) {
            Some(b'{') => {
                self.pos += 1;
                let mut m = Map::new();
                while !self.eat(b'}') {
                    let k = match self.value(depth + 1)? {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
                        other => return Err(format!("unsupported dict key {other}")),
                    };
                    if !self.eat(b':') {
                        return Err(format!("expected ':' at {}", self.pos));
                    }
                    m.insert(k, self.value(depth + 1)?);
                    if !self.eat(b',') {
                        if self.eat(b'}') {
                            break;
                        }
                        return Err(format!("expected ',' or '}}' at {}", self.pos));
                    }
                }
                Ok(Value::Object(m))
            }
            Some(&open @ (b'[' | b'(')) => {
                self.pos += 1;
                let close = if open == b'[' { b']' } else { b')' };
                let mut v = vec![];
                while !self.eat(close) {
                    v.push(self.value(depth + 1)?);
                    if !self.eat(b',') {
                        if self.eat(close) {
                            break;
                        }
                        return Err(format!("expected ',' or '{}' at {}", close as char, self.pos));
                    }
                }
                Ok(Value::Array(v))
            }
            Some(b'\'' | b'"') => self.string().map(Value::String),
            Some(_) => self.word(),
            None => Err("unexpected end".into()),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let q = self.s[self.pos];
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.pos) else { return Err("unterminated string".into()) };
            self.pos += 1;
            match c {
                _ if c == q => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.pos) else { return Err("unterminated string".into()) };
                    self.pos += 1;
                    let hex = |p: &mut Self, n: usize| -> Result<u32, String> {
                        let h = p.s.get(p.pos..p.pos + n).ok_or("short escape")?;
                        p.pos += n;
                        u32::from_str_radix(std::str::from_utf8(h).map_err(|e| e.to_string())?, 16)
                            .map_err(|e| e.to_string())
                    };
                    let ch = match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'0' => '\0',
                        b'\\' | b'\'' | b'"' => char::from(e),
                        b'x' => char::from_u32(hex(self, 2)?).ok_or("bad escape")?,
                        b'u' => char::from_u32(hex(self, 4)?).ok_or("bad escape")?,
                        b'U' => char::from_u32(hex(self, 8)?).ok_or("bad escape")?,
                        other => return Err(format!("unsupported escape \\{}", char::from(other))),
                    };
                    let mut b = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    fn word(&mut self) -> Result<Value, String> {
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(|c| c.is_ascii_alphanumeric() || b"+-._".contains(c)) {
            self.pos += 1;
        }
        let w = std::str::from_utf8(&self.s[start..self.pos]).map_err(|e| e.to_string())?;
        match w {
            "True" => Ok(Value::Bool(true)),
            "False" => Ok(Value::Bool(false)),
            "None" => Ok(Value::Null),
            "" => Err(format!("unexpected {:?} at {start}", self.rest())),
            _ => {
                let digits = w.replace('_', "");
                if let Ok(i) = digits.parse::<i64>() {
                    return Ok(Value::Number(i.into()));
                }
                digits
                    .parse::<f64>()
                    .ok()
                    .filter(|f| {
                        f.is_finite() && w.bytes().next().is_some_and(|c| c.is_ascii_digit() || b"+-.".contains(&c))
                    })
                    .and_then(Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| format!("not a literal: {w:?} (names are never evaluated)"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_ultralytics_writes() {
        assert_eq!(
            parse("{0: 'person', 1: \"it's\", 2: 'a\\\\b'}").expect("ok"),
            json!({"0": "person", "1": "it's", "2": "a\\b"})
        );
        assert_eq!(parse("[640, 640]").expect("ok"), json!([640, 640]));
        assert_eq!(
            parse("{'batch': 1, 'half': False, 'nms': True, 'conf': None, 'iou': 0.7, 'x': (1,), 'y': -2e-3}")
                .expect("ok"),
            json!({"batch": 1, "half": false, "nms": true, "conf": null, "iou": 0.7, "x": [1], "y": -0.002})
        );
        assert_eq!(parse(" {} ").expect("ok"), json!({}));
        assert_eq!(parse("'caf\\xe9 \\u00e9'").expect("ok"), json!("café é"));
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "__import__('os').system('x')",
            "{0: 'a'",
            "[1, 2",
            "os",
            "{'a' 1}",
            "'x",
            "1 2",
            "",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
