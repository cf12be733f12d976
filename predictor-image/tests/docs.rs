//! The docs tell the truth (README.md and docs/*.md):
//! - every relative link resolves, `#anchors` included (GitHub's heading slugs);
//! - every subcommand and flag that a shell block or an inline command passes to one of our
//!   binaries exists (`<binary> [<subcommand>] --help`), and every other `--flag` in the prose
//!   exists in some binary;
//! - every route that a shell block `curl`s, or that the README names in prose, is served: the
//!   predictor's route table ([`ocellus_predictor::api::routes`], no model needed) and the health
//!   router the operator and apiserver serve.
//!
//! What sits under a "Planned" heading, or on a line that says "planned", describes what is not
//! built: its flags and routes are not checked (its links are).
//!
//! It lives in the predictor package because the route table is the predictor's, and hack/test.sh
//! runs it twice: in `cargo test --workspace`, where the trainer has no libtorch (what only the
//! libtorch trainer has is reported as not checked), and with `--features torch` in the same
//! invocation as the libtorch trainer, where everything must exist.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Our binaries whose flags are checked: clap CLIs, so `--help` has no side effects.
const CHECKED: &[&str] = &[
    "ocellus-trainer",
    "ocellus-predictor",
    "ocellus-operator",
    "ocellus-apiserver",
    "ocellus-localcluster",
    "ocellus-fixtures",
    "ocellus-loadgen",
    "ocellus-testserver",
    "ocellus-demo",
];
/// Our binaries that are only checked to exist: `crdgen` reads its arguments by hand and would
/// write the CRDs when asked for `--help`.
const UNCHECKED: &[&str] = &["crdgen"];
/// Flags of other tools that the prose names alone: cargo's `--features`, kubectl's `--validate`.
const FOREIGN_FLAGS: &[&str] = &["--features", "--validate"];
/// Commands of other tools, whose flags are theirs.
const FOREIGN_COMMANDS: &[&str] = &["cargo", "kubectl", "helm", "curl", "git", "python3", "pip", "docker", "source"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

#[test]
fn docs_tell_the_truth() {
    let mut c = Checker::new(cfg!(feature = "torch"));
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("reading docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.insert(0, root.join("README.md"));
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        c.check(file, &text);
    }
    for s in &c.skipped {
        println!("not checked here: {s}");
    }
    assert!(c.errors.is_empty(), "the docs disagree with the code:\n{}", c.errors.join("\n"));
}

/// The check itself fails on what does not exist, and leaves the planned section alone.
#[test]
fn made_up_links_flags_and_routes_fail() {
    let text = "# Title\n\n[a](no-such-file.md), [b](#no-such-anchor), [c](#title), [d](docs/local-cluster.md)\n\n\
        ```sh\ncargo run -p ocellus-predictor -- serve --model m.onnx --no-such-flag\n\
        ocellus-predictor no-such-subcommand\ncurl -F file=@x.jpg http://127.0.0.1:8080/no/such/route\n\
        curl http://127.0.0.1:8080/v2/models/yolov8n # served\n```\n\n\
        ```sh\nkubectl port-forward -n ocellus-system svc/ocellus-apiserver 8000 &\n\
        curl -F file=@x.jpg http://127.0.0.1:8000/team-a/shapes/predict # served through the gateway\n\
        curl http://127.0.0.1:8000/team-a/shapes/no/gateway/route\n```\n\n\
        Pass `--no-such-prose-flag`, call `POST /no-such-route`, or `GET /healthz`.\n\n\
        ## Planned\n\n`--planned-flag` and `/api/planned`.\n";
    let mut c = Checker::new(true);
    c.check(&repo_root().join("README.md"), text);
    let errors = c.errors.join("\n");
    for want in [
        "no-such-file.md",
        "#no-such-anchor",
        "`--no-such-flag`",
        "`no-such-subcommand`",
        "/no/such/route",
        "`--no-such-prose-flag`",
        "/no-such-route",
        "/team-a/shapes/no/gateway/route",
    ] {
        assert!(errors.contains(want), "no error names {want}:\n{errors}");
    }
    assert_eq!(c.errors.len(), 8, "{errors}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the predictor is in the workspace").to_path_buf()
}

/// One line of Markdown: its number, whether it is in a fenced block (the block's number and
/// language), whether it is under a "Planned" heading, and its heading (level, title) if it is one.
struct Line<'a> {
    no: usize,
    text: &'a str,
    code: Option<(usize, &'a str)>,
    planned: bool,
    heading: Option<(usize, &'a str)>,
}

fn parse(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let (mut fence, mut blocks, mut planned_at): (Option<(&str, &str)>, usize, Option<usize>) = (None, 0, None);
    for (i, text) in text.lines().enumerate() {
        let t = text.trim_start();
        if let Some((marker, lang)) = fence {
            if t.starts_with(marker) && t.trim_end().chars().all(|c| marker.starts_with(c)) {
                fence = None;
            } else {
                out.push(Line {
                    no: i + 1,
                    text,
                    code: Some((blocks, lang)),
                    planned: planned_at.is_some(),
                    heading: None,
                });
            }
            continue;
        }
        if t.starts_with("```") || t.starts_with("~~~") {
            let n = t.chars().take_while(|&c| t.starts_with(c)).count();
            blocks += 1;
            fence = Some((&t[..n], t[n..].trim()));
            continue;
        }
        let level = t.chars().take_while(|&c| c == '#').count();
        let heading = (text.len() - t.len() < 4 && (1..=6).contains(&level) && t[level..].starts_with(' '))
            .then(|| (level, t[level..].trim().trim_end_matches('#').trim()));
        if let Some((level, title)) = heading {
            if planned_at.is_some_and(|p| level <= p) {
                planned_at = None;
            }
            if planned_at.is_none() && title.to_lowercase().contains("planned") {
                planned_at = Some(level);
            }
        }
        out.push(Line { no: i + 1, text, code: None, planned: planned_at.is_some(), heading });
    }
    out
}

/// GitHub's anchors of a file's headings: the text lower-cased, punctuation other than `-` and `_`
/// dropped, spaces as `-`; a repeated anchor gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, title) in parse(text).iter().filter_map(|l| l.heading) {
        let (title, _) = split_links(title);
        let base: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The line with its inline code blanked out, and the inline code spans.
fn code_spans(line: &str) -> (String, Vec<String>) {
    let c: Vec<char> = line.chars().collect();
    let (mut masked, mut spans, mut i) = (String::new(), Vec::new(), 0);
    while i < c.len() {
        if c[i] != '`' {
            masked.push(c[i]);
            i += 1;
            continue;
        }
        let n = c[i..].iter().take_while(|&&x| x == '`').count();
        let mut j = i + n;
        let mut close = None;
        while j < c.len() {
            let m = c[j..].iter().take_while(|&&x| x == '`').count();
            if m == n {
                close = Some(j);
                break;
            }
            j += m.max(1);
        }
        match close {
            Some(j) => {
                spans.push(c[i + n..j].iter().collect::<String>().trim().to_string());
                masked.extend(std::iter::repeat_n(' ', j + n - i));
                i = j + n;
            }
            None => {
                masked.extend(&c[i..i + n]);
                i += n;
            }
        }
    }
    (masked, spans)
}

/// `[text](target)` links replaced by their text, and their targets (reference definitions,
/// `[x]: target`, count too).
fn split_links(s: &str) -> (String, Vec<String>) {
    let (mut text, mut targets, mut rest) = (String::new(), Vec::new(), s);
    if let Some((label, target)) = s.trim_start().strip_prefix('[').and_then(|r| r.split_once("]:")) {
        return (label.to_string(), vec![target.trim().to_string()]);
    }
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let link = after.find(']').and_then(|close| {
            let inner = after[close + 1..].strip_prefix('(')?;
            let mut depth = 0;
            let end = inner.char_indices().find_map(|(k, ch)| match ch {
                '(' => {
                    depth += 1;
                    None
                }
                ')' if depth == 0 => Some(k),
                ')' => {
                    depth -= 1;
                    None
                }
                _ => None,
            })?;
            Some((close, &inner[..end], &inner[end + 1..]))
        });
        match link {
            Some((close, target, tail)) => {
                text.push_str(&rest[..open]);
                text.push_str(&after[..close]);
                targets.push(target.to_string());
                rest = tail;
            }
            None => {
                text.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    (text, targets)
}

/// Shell words of a line, with `&&`, `||`, `|`, `;` and `&` as words of their own; quotes removed,
/// a `#` comment dropped.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut started, mut quote) = (Vec::new(), String::new(), false, None);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => (quote, started) = (Some(c), true),
            (None, '\\') => {
                cur.extend(chars.next());
                started = true;
            }
            (None, '#') if !started => break,
            (None, c) if c.is_whitespace() || matches!(c, ';' | '|' | '&') => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
                if !c.is_whitespace() {
                    let mut op = c.to_string();
                    while let Some(&n) = chars.peek().filter(|n| matches!(**n, '|' | '&')) {
                        op.push(n);
                        chars.next();
                    }
                    out.push(op);
                }
            }
            (None, c) => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    out
}

/// The simple commands of a shell text (continuation lines joined), without leading `VAR=value`
/// assignments.
fn commands(text: &str) -> Vec<Vec<String>> {
    let joined = text.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        for cmd in words(line).split(|w| matches!(w.as_str(), "&&" | "||" | "|" | ";" | "&")) {
            let start = cmd.iter().take_while(|w| w.split_once('=').is_some_and(|(k, _)| is_name(k))).count();
            let cmd = &cmd[start..];
            let start =
                cmd.iter().take_while(|w| matches!(w.as_str(), "env" | "exec" | "sudo" | "time" | "nohup")).count();
            if cmd.len() > start {
                out.push(cmd[start..].to_vec());
            }
        }
    }
    out
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// What `--help` says: each option (with whether it takes a value) and the subcommands.
#[derive(Clone, Default)]
struct Help {
    options: HashMap<String, bool>,
    subcommands: Vec<String>,
}

fn parse_help(text: &str) -> Help {
    let mut h = Help::default();
    let mut in_commands = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_commands = line.starts_with("Commands:");
            continue;
        }
        let t = line.trim_start();
        if in_commands {
            // Two spaces: a subcommand; deeper: its wrapped description.
            if !line.starts_with("   ")
                && let Some(name) = t.split_whitespace().next()
                && name != "help"
            {
                h.subcommands.push(name.to_string());
            }
            continue;
        }
        if t.starts_with('-') {
            let (mut names, mut takes_value) = (Vec::new(), false);
            for w in t.split_whitespace() {
                let w = w.trim_end_matches(',');
                if w.starts_with('-') {
                    names.push(w.split(['=', '[']).next().unwrap_or(w).to_string());
                } else if w.starts_with('<') || w.starts_with("[<") {
                    takes_value = true;
                } else {
                    break;
                }
            }
            h.options.extend(names.into_iter().map(|n| (n, takes_value)));
        }
    }
    h
}

/// Which servers a shell block talks to.
#[derive(Clone, Copy, PartialEq)]
enum Server {
    Predictor,
    Health,
    /// The apiserver's gateway (`kubectl port-forward` to it): `/{namespace}/{name}/` + a predictor route.
    Gateway,
    Any,
}

struct Checker {
    root: PathBuf,
    /// Where cargo put the binaries (this package's, and the others' of the same build).
    bin_dir: PathBuf,
    /// Whether every trainer subcommand must exist (the libtorch run).
    strict: bool,
    helps: HashMap<(String, Option<String>), Result<Help, String>>,
    errors: Vec<String>,
    skipped: Vec<String>,
}

impl Checker {
    fn new(strict: bool) -> Checker {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_ocellus-predictor")).parent().expect("the binaries' directory");
        Checker {
            root: repo_root(),
            bin_dir: bin_dir.to_path_buf(),
            strict,
            helps: HashMap::new(),
            errors: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn check(&mut self, file: &Path, text: &str) {
        let name = file.strip_prefix(&self.root).unwrap_or(file).display().to_string();
        let readme = name == "README.md";
        let lines = parse(text);
        for l in lines.iter().filter(|l| l.code.is_none()) {
            let place = format!("{name}:{}", l.no);
            let (masked, spans) = code_spans(l.text);
            for target in split_links(&masked).1 {
                if let Err(e) = self.check_link(file, text, &target) {
                    self.errors.push(format!("{place}: link `{target}`: {e}"));
                }
            }
            if l.planned || l.text.to_lowercase().contains("planned") {
                continue;
            }
            for span in spans {
                self.check_span(&place, &span, readme);
            }
        }
        let mut blocks: Vec<(usize, usize, String)> = Vec::new();
        for l in lines.iter().filter(|l| !l.planned) {
            if let Some((id, "sh" | "bash" | "shell")) = l.code {
                match blocks.last_mut() {
                    Some((last, _, text)) if *last == id => {
                        text.push_str(l.text);
                        text.push('\n');
                    }
                    _ => blocks.push((id, l.no, format!("{}\n", l.text))),
                }
            }
        }
        for (_, no, block) in blocks {
            self.check_block(&format!("{name}:{no}"), &block);
        }
    }

    fn check_link(&self, file: &Path, text: &str, target: &str) -> Result<(), String> {
        let target = target
            .strip_prefix('<')
            .map_or_else(|| target.split_whitespace().next().unwrap_or(""), |t| t.split('>').next().unwrap_or(""));
        if target.contains("://") || target.starts_with("mailto:") {
            return Ok(());
        }
        let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
        let resolved = match path {
            "" => file.to_path_buf(),
            p if p.starts_with('/') => self.root.join(&p[1..]),
            p => file.parent().unwrap_or(Path::new(".")).join(p),
        };
        if !resolved.exists() {
            return Err(format!("{} does not exist", resolved.display()));
        }
        if anchor.is_empty() {
            return Ok(());
        }
        let headings = if path.is_empty() {
            anchors(text)
        } else {
            anchors(&std::fs::read_to_string(&resolved).map_err(|e| format!("{}: {e}", resolved.display()))?)
        };
        if headings.contains(anchor) {
            Ok(())
        } else {
            Err(format!("no heading has the anchor #{anchor} (there are: {headings:?})"))
        }
    }

    /// Inline code: a command of ours is checked like a shell line; a lone `--flag` must exist in
    /// some binary; in the README, a route (`/path` or `POST /path`) must be served.
    fn check_span(&mut self, place: &str, span: &str, readme: bool) {
        for cmd in commands(span) {
            if let Some((bin, args)) = self.invocation(&cmd) {
                self.check_invocation(place, &bin, &args);
            } else if !FOREIGN_COMMANDS.contains(&cmd[0].as_str()) {
                for flag in cmd.iter().filter(|w| w.starts_with("--") && w.len() > 2) {
                    self.check_lone_flag(place, flag.split('=').next().unwrap_or(flag));
                }
            }
        }
        if !readme {
            return;
        }
        let (method, path) = match span.split_once(' ') {
            Some((m, p)) if METHODS.contains(&m) && p.starts_with('/') && !p.contains(' ') => (Some(m), p),
            None if span.starts_with('/') => (None, span),
            _ => return,
        };
        self.check_route(place, method, path, Server::Any);
    }

    fn check_block(&mut self, place: &str, block: &str) {
        let mut servers = Vec::new();
        let mut curls = Vec::new();
        for cmd in commands(block) {
            if let Some((bin, args)) = self.invocation(&cmd) {
                match bin.as_str() {
                    "ocellus-predictor" if args.iter().any(|a| a == "serve") => servers.push(Server::Predictor),
                    "ocellus-operator" | "ocellus-apiserver" => servers.push(Server::Health),
                    _ => {}
                }
                self.check_invocation(place, &bin, &args);
            } else if cmd[0] == "kubectl"
                && cmd.get(1).is_some_and(|w| w == "port-forward")
                && cmd.iter().any(|w| w.contains("ocellus-apiserver"))
            {
                servers.push(Server::Gateway);
            } else if cmd[0] == "curl" {
                curls.push(cmd);
            } else if cmd[0].contains('/')
                && !cmd[0].starts_with(['/', '~', '$', '.', '<'])
                && !self.root.join(&cmd[0]).exists()
            {
                self.errors.push(format!("{place}: `{}` does not exist", cmd[0]));
            }
        }
        for cmd in curls {
            let method = match cmd.iter().position(|w| w == "-X" || w == "--request") {
                Some(i) => cmd.get(i + 1).map_or("GET", String::as_str),
                None if cmd.iter().any(|w| {
                    matches!(w.as_str(), "-F" | "--form" | "-d" | "--data" | "--data-binary" | "--data-raw" | "--json")
                }) =>
                {
                    "POST"
                }
                None => "GET",
            };
            for url in cmd.iter().filter(|w| w.starts_with("http://") || w.starts_with("https://")) {
                let after_scheme = url.split_once("://").map_or("", |(_, r)| r);
                let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
                match servers.as_slice() {
                    [] => self.errors.push(format!(
                        "{place}: `curl {url}`: no server of ours is started in this block, so the route cannot be checked"
                    )),
                    [first, ..] => {
                        let server = if servers.iter().all(|s| s == first) { *first } else { Server::Any };
                        self.check_route(place, Some(method), path, server);
                    }
                }
            }
        }
    }

    /// `(binary, its arguments)` when a command runs one of our binaries, directly or through
    /// `cargo run`.
    fn invocation(&mut self, cmd: &[String]) -> Option<(String, Vec<String>)> {
        if cmd[0] == "cargo" && cmd.get(1).is_some_and(|w| w == "run") {
            let (mut package, mut bin, mut i) = (None, None, 2);
            while i < cmd.len() && cmd[i] != "--" {
                let w = cmd[i].as_str();
                match w {
                    "-p" | "--package" => package = cmd.get(i + 1).cloned(),
                    "--bin" => bin = cmd.get(i + 1).cloned(),
                    _ => {}
                }
                if let Some(v) = w.strip_prefix("--package=") {
                    package = Some(v.to_string());
                } else if let Some(v) = w.strip_prefix("--bin=") {
                    bin = Some(v.to_string());
                } else if matches!(
                    w,
                    "-p" | "--package"
                        | "--bin"
                        | "--features"
                        | "-F"
                        | "--profile"
                        | "--target"
                        | "--target-dir"
                        | "--manifest-path"
                        | "-j"
                        | "--jobs"
                        | "--config"
                        | "--example"
                ) {
                    i += 1;
                }
                i += 1;
            }
            let bin = bin.or(package)?;
            if !CHECKED.contains(&bin.as_str()) && !UNCHECKED.contains(&bin.as_str()) {
                self.errors.push(format!("`cargo run` of `{bin}`: not one of the binaries this test knows (CHECKED)"));
                return None;
            }
            return Some((bin, cmd.get(i + 1..).unwrap_or_default().to_vec()));
        }
        let base = Path::new(&cmd[0]).file_name()?.to_str()?;
        // `hack/demo.sh` passes its arguments to `ocellus-demo`.
        let base = if base == "demo.sh" { "ocellus-demo" } else { base };
        (CHECKED.contains(&base) || UNCHECKED.contains(&base)).then(|| (base.to_string(), cmd[1..].to_vec()))
    }

    fn help(&mut self, bin: &str, sub: Option<&str>) -> Result<Help, String> {
        let key = (bin.to_string(), sub.map(str::to_string));
        if let Some(h) = self.helps.get(&key) {
            return h.clone();
        }
        let path = self.bin_dir.join(bin);
        let result = if !path.exists() {
            Err(format!("{} is not built (`cargo build` builds it; hack/test.sh does)", path.display()))
        } else {
            let mut cmd = Command::new(&path);
            cmd.args(sub).arg("--help");
            match cmd.output() {
                Ok(out) if out.status.success() => Ok(parse_help(&String::from_utf8_lossy(&out.stdout))),
                Ok(out) => Err(String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("failed").to_string()),
                Err(e) => Err(format!("cannot run {}: {e}", path.display())),
            }
        };
        self.helps.insert(key, result.clone());
        result
    }

    fn check_invocation(&mut self, place: &str, bin: &str, args: &[String]) {
        if UNCHECKED.contains(&bin) {
            if !self.bin_dir.join(bin).exists() {
                self.errors.push(format!("{place}: `{bin}` is not built"));
            } else if !args.is_empty() {
                self.skipped.push(format!("{place}: the arguments of `{bin}` (it has no --help)"));
            }
            return;
        }
        let top = match self.help(bin, None) {
            Ok(h) => h,
            Err(e) => return self.errors.push(format!("{place}: `{bin}`: {e}")),
        };
        let (mut current, mut sub, mut i) = (top.clone(), None::<&str>, 0);
        while i < args.len() && args[i] != "--" {
            let a = args[i].as_str();
            if a.starts_with('-') && a.len() > 1 {
                let flag = a.split('=').next().unwrap_or(a);
                match current.options.get(flag) {
                    Some(&takes_value) if takes_value && !a.contains('=') => i += 1,
                    Some(_) => {}
                    None => {
                        let cmd = sub.map_or(bin.to_string(), |s| format!("{bin} {s}"));
                        self.errors.push(format!("{place}: `{cmd}` has no `{flag}`"));
                    }
                }
            } else if sub.is_none() && !top.subcommands.is_empty() {
                sub = Some(a);
                if !top.subcommands.iter().any(|s| s == a) {
                    if bin == "ocellus-trainer" && !self.strict {
                        self.skipped.push(format!(
                            "{place}: `{bin} {a}` (this trainer is built without libtorch; the libtorch run checks it)"
                        ));
                    } else {
                        self.errors.push(format!(
                            "{place}: `{bin}` has no subcommand `{a}` (it has {:?}){}",
                            top.subcommands,
                            if bin == "ocellus-trainer" {
                                "; build it with `--features ocellus-trainer/torch` in this test's cargo invocation, as hack/test.sh does"
                            } else {
                                ""
                            }
                        ));
                    }
                    return;
                }
                match self.help(bin, Some(a)) {
                    Ok(h) => current = h,
                    Err(e) => return self.errors.push(format!("{place}: `{bin} {a} --help`: {e}")),
                }
            }
            i += 1;
        }
    }

    /// A flag named alone in prose must exist in some subcommand of some binary of ours.
    fn check_lone_flag(&mut self, place: &str, flag: &str) {
        if FOREIGN_FLAGS.contains(&flag) {
            return;
        }
        for bin in CHECKED {
            let Ok(top) = self.help(bin, None) else { continue };
            if top.options.contains_key(flag) {
                return;
            }
            for sub in &top.subcommands {
                if self.help(bin, Some(sub)).is_ok_and(|h| h.options.contains_key(flag)) {
                    return;
                }
            }
        }
        if self.strict {
            self.errors.push(format!("{place}: no binary of ours has `{flag}`"));
        } else {
            self.skipped.push(format!("{place}: `{flag}` (not in these builds; the libtorch run checks it)"));
        }
    }

    fn check_route(&mut self, place: &str, method: Option<&str>, path: &str, server: Server) {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let predictor = || {
            ocellus_predictor::api::routes()
                .iter()
                .any(|(m, p)| method.is_none_or(|want| m.as_str() == want) && route_matches(p, path))
        };
        let found = match server {
            Server::Predictor => predictor(),
            Server::Gateway => {
                let rest = path.splitn(4, '/').nth(3).map(|r| format!("/{r}")).unwrap_or_default();
                ocellus_predictor::api::routes()
                    .iter()
                    .any(|(m, p)| method.is_none_or(|want| m.as_str() == want) && route_matches(p, &rest))
            }
            Server::Health => health_serves(method.unwrap_or("GET"), path),
            Server::Any => predictor() || health_serves(method.unwrap_or("GET"), path),
        };
        if !found {
            let method = method.map_or(String::new(), |m| format!("{m} "));
            self.errors.push(format!("{place}: no server of ours serves `{method}{path}`"));
        }
    }
}

/// Whether a documented path matches a route: `{param}` in the route matches any segment, and a
/// placeholder in the doc (`{x}`, `<x>`, `...`) matches any route segment. A route of parameters
/// only (Roboflow's legacy `/{project}/{version}`) matches only a doc path of placeholders, so
/// that it does not vouch for every two-segment path the docs name.
fn route_matches(route: &str, path: &str) -> bool {
    let (r, p): (Vec<&str>, Vec<&str>) = (route.split('/').collect(), path.split('/').collect());
    let param = |s: &&str| s.starts_with('{') || s.starts_with('<');
    if r.iter().skip(1).all(param) && !p.iter().skip(1).all(param) {
        return false;
    }
    if p.last() == Some(&"...") {
        return r.len() >= p.len() - 1 && r.iter().zip(&p[..p.len() - 1]).all(|(a, b)| segment_matches(a, b));
    }
    r.len() == p.len() && r.iter().zip(&p).all(|(a, b)| segment_matches(a, b))
}

fn segment_matches(route: &str, doc: &str) -> bool {
    let placeholder = |s: &str| (s.starts_with('{') && s.ends_with('}')) || (s.starts_with('<') && s.ends_with('>'));
    route == doc || placeholder(route) || placeholder(doc) || doc == "..."
}

/// Whether the health router that every server of ours merges (`/healthz`, `/readyz`, `/metrics`)
/// answers `method path` with anything but 404/405; it is served once on loopback to ask it.
fn health_serves(method: &str, path: &str) -> bool {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    let addr = ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding loopback");
                tx.send(listener.local_addr().expect("its address")).expect("sending the address");
                let health = ocellus_common::Health::new(prometheus::Registry::new());
                axum::serve(listener, health.router()).await.expect("serving the health router");
            });
        });
        rx.recv().expect("the health router's address")
    });
    let client = reqwest::blocking::Client::builder().no_proxy().build().expect("an HTTP client");
    let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else { return false };
    client
        .request(method, format!("http://{addr}{path}"))
        .send()
        .is_ok_and(|r| !matches!(r.status().as_u16(), 404 | 405))
}
