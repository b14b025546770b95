//! Resolution: `extends` (flattening), then references, then checking the
//! known component types, then the output tree.

use std::collections::{HashMap, HashSet};

use super::model::{Attr, Component, Extends, RefPart, Reference, Value};
use super::{Attributes, DescriptionError, Kind, ResolvedComponent, ResolvedValue};

type Path = Vec<String>;

/// Most components, values and `extends` names a resolution may make.
/// `extends` and references copy what they name, so a few lines can ask for
/// an exponential tree (`A2 { a extends A1; b extends A1; }`, `l2 [l1, l1]`,
/// ...): past this the description is refused, not resolved out of memory.
/// Real pools make a few thousand.
const MAX_SIZE: usize = 250_000;

/// Deepest chain of `extends` (with nesting) or of references through
/// references: both are followed by recursion, and a description is untrusted.
const MAX_DEPTH: usize = 256;

fn too_large(at: &super::Pos, path: &[String]) -> DescriptionError {
    DescriptionError::TooLarge {
        at: at.clone(),
        path: disp(path),
        limit: MAX_SIZE,
    }
}

fn too_deep(at: &super::Pos, path: &[String], what: &'static str) -> DescriptionError {
    DescriptionError::TooDeep {
        at: at.clone(),
        path: disp(path),
        what,
        limit: MAX_DEPTH,
    }
}

/// What copying `c` makes: itself, its `extends` names, its values.
fn component_size(c: &Component) -> usize {
    1 + c.types.len()
        + c.attrs()
            .iter()
            .map(|(_, a)| value_size(&a.value))
            .sum::<usize>()
}

fn value_size(v: &Value) -> usize {
    match v {
        Value::List(items) => 1 + items.iter().map(|a| value_size(&a.value)).sum::<usize>(),
        Value::Component(c) => component_size(c),
        _ => 1,
    }
}

fn disp(path: &[String]) -> String {
    if path.is_empty() {
        "ROOT".to_string()
    } else {
        path.join(":")
    }
}

fn child(path: &[String], name: &str) -> Path {
    let mut p = path.to_vec();
    p.push(name.to_string());
    p
}

/// Resolves the sources (prelude, library files, the user's file: later
/// top-level attributes override earlier ones) into the `sfConfig` tree.
pub(crate) fn resolve(
    sources: Vec<Component>,
    source_name: &str,
) -> Result<ResolvedComponent, DescriptionError> {
    let mut sources = sources.into_iter();
    let mut raw = sources.next().expect("the prelude");
    for s in sources {
        raw.pos = s.pos.clone();
        for (name, attr) in s.into_attrs() {
            raw.set(&name, attr);
        }
    }
    if !matches!(
        raw.get("sfConfig"),
        Some(Attr {
            value: Value::Component(_),
            ..
        })
    ) {
        return Err(DescriptionError::NoSfConfig {
            file: source_name.to_string(),
        });
    }
    let mut flattener = Flattener {
        raw: &raw,
        stack: Vec::new(),
        cache: HashMap::new(),
        made: 0,
    };
    let flat = flattener.flatten(&[])?;
    let mut resolver = Resolver {
        made: flattener.made,
        root: flat,
        depth: 0,
        done: HashSet::new(),
        stack: Vec::new(),
    };
    let top = vec!["sfConfig".to_string()];
    resolver.resolve_attr(&top)?;
    let Some(Attr {
        value: Value::Component(config),
        ..
    }) = resolver.root.get("sfConfig")
    else {
        unreachable!("sfConfig is a component")
    };
    resolver.build("sfConfig", &top, config, "localhost")
}

// ---------------------------------------------------------------------------
// extends
// ---------------------------------------------------------------------------

struct Flattener<'a> {
    raw: &'a Component,
    /// Components being flattened, with where their `extends` is written.
    stack: Vec<(Path, Option<super::Pos>)>,
    /// Flattened components with their sizes.
    cache: HashMap<Path, (Component, usize)>,
    /// The size of every copy made so far, bounded by `MAX_SIZE`.
    made: usize,
}

impl<'a> Flattener<'a> {
    fn raw_at(&self, path: &[String]) -> Option<&'a Component> {
        let mut c = self.raw;
        for n in path {
            match &c.get(n)?.value {
                Value::Component(x) => c = x,
                _ => return None,
            }
        }
        Some(c)
    }

    /// Charges a copy of `size` to the budget, before it is made.
    fn charge(
        &mut self,
        size: usize,
        at: &super::Pos,
        path: &[String],
    ) -> Result<(), DescriptionError> {
        self.made += size;
        if self.made > MAX_SIZE {
            return Err(too_large(at, path));
        }
        Ok(())
    }

    fn flatten(&mut self, path: &[String]) -> Result<Component, DescriptionError> {
        let raw = self.raw_at(path).expect("flatten is called on components");
        if let Some(&(_, size)) = self.cache.get(path) {
            self.charge(size, &raw.pos, path)?;
            return Ok(self.cache[path].0.clone());
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(too_deep(&raw.pos, path, "`extends` and nested components"));
        }
        if let Some(i) = self.stack.iter().position(|(p, _)| p == path) {
            let (culprit, at) = self.stack.last().expect("non-empty").clone();
            let chain: Vec<String> = self.stack[i..]
                .iter()
                .map(|(p, _)| disp(p))
                .chain(std::iter::once(disp(path)))
                .collect();
            return Err(DescriptionError::ExtendsCycle {
                at: at.unwrap_or_else(|| raw.pos.clone()),
                path: disp(&culprit),
                chain: chain.join(" -> "),
            });
        }
        self.stack
            .push((path.to_vec(), raw.extends.as_ref().map(|e| e.pos.clone())));
        let mut result = match &raw.extends {
            Some(ext) => {
                let base_path = self.find_base(ext, path)?;
                let mut base = self.flatten(&base_path)?;
                base.types
                    .insert(0, base_path.last().cloned().unwrap_or_default());
                base
            }
            None => Component::new(raw.pos.clone()),
        };
        result.pos = raw.pos.clone();
        result.extends = None;
        for (name, attr) in raw.attrs() {
            let attr = match &attr.value {
                Value::Component(_) => Attr {
                    value: Value::Component(self.flatten(&child(path, name))?),
                    pos: attr.pos.clone(),
                },
                _ => attr.clone(),
            };
            merge_attr(&mut result, name, attr);
        }
        self.stack.pop();
        let size = component_size(&result);
        self.charge(size, &raw.pos, path)?;
        self.cache.insert(path.to_vec(), (result.clone(), size));
        Ok(result)
    }

    /// Finds what `extends` names, in the written tree, from the enclosing
    /// component outwards.
    fn find_base(&self, ext: &Extends, path: &[String]) -> Result<Path, DescriptionError> {
        let fail = |message: String| DescriptionError::DanglingReference {
            at: ext.pos.clone(),
            path: disp(path),
            reference: match ext.reference.parts.as_slice() {
                [RefPart::Attrib(n)] => format!("extends {n}"),
                _ => format!("extends {}", ext.reference),
            },
            message,
        };
        let mut cur: Path = path[..path.len().saturating_sub(1)].to_vec();
        for part in &ext.reference.parts {
            match part {
                RefPart::Root => cur.clear(),
                RefPart::This => {}
                RefPart::Parent => {
                    if cur.pop().is_none() {
                        return Err(fail("PARENT of the root".into()));
                    }
                }
                RefPart::Here(n) => {
                    if self.raw_at(&cur).and_then(|c| c.get(n)).is_none() {
                        return Err(fail(format!("{} has no component `{n}`", disp(&cur))));
                    }
                    cur.push(n.clone());
                }
                RefPart::Attrib(n) => {
                    let mut scope = cur.clone();
                    loop {
                        if self.raw_at(&scope).and_then(|c| c.get(n)).is_some() {
                            scope.push(n.clone());
                            cur = scope;
                            break;
                        }
                        if scope.pop().is_none() {
                            return Err(fail(format!(
                                "no component `{n}` here, in any enclosing component, in the template library or the prelude"
                            )));
                        }
                    }
                }
            }
        }
        if cur.is_empty() || self.raw_at(&cur).is_none() {
            return Err(fail(format!("{} is not a component", disp(&cur))));
        }
        Ok(cur)
    }
}

/// A child's attribute over its base's: in place; a nested component
/// without its own `extends` merges into the base's one.
fn merge_attr(into: &mut Component, name: &str, attr: Attr) {
    if let (Value::Component(over), Some(slot)) = (&attr.value, into.get_mut(name)) {
        if let Value::Component(base) = &mut slot.value {
            if over.types.is_empty() {
                for (n, a) in over.attrs().to_vec() {
                    merge_attr(base, &n, a);
                }
                base.pos = over.pos.clone();
                slot.pos = attr.pos;
                return;
            }
        }
    }
    into.set(name, attr);
}

// ---------------------------------------------------------------------------
// references
// ---------------------------------------------------------------------------

const MAX_HOPS: usize = 64;

struct Resolver {
    /// Carried on from the flattening: references copy too.
    made: usize,
    root: Component,
    /// Recursion depth of `resolve_attr`, bounded by `MAX_DEPTH`.
    depth: usize,
    done: HashSet<Path>,
    /// Attributes whose references are being resolved.
    stack: Vec<Path>,
}

impl Resolver {
    fn comp_at(&self, path: &[String]) -> Option<&Component> {
        let mut c = &self.root;
        for n in path {
            match &c.get(n)?.value {
                Value::Component(x) => c = x,
                _ => return None,
            }
        }
        Some(c)
    }

    fn attr_at(&self, path: &[String]) -> Option<&Attr> {
        let (last, parent) = path.split_last()?;
        self.comp_at(parent)?.get(last)
    }

    fn set_value(&mut self, path: &[String], value: Value) {
        let (last, parent) = path.split_last().expect("an attribute path");
        let mut c = &mut self.root;
        for n in parent {
            match c.get_mut(n).map(|a| &mut a.value) {
                Some(Value::Component(x)) => c = x,
                _ => unreachable!("the path was looked up"),
            }
        }
        c.get_mut(last).expect("the path was looked up").value = value;
    }

    /// Follows references until a component; `path` names an attribute (or
    /// the root).
    fn deref_component(&self, path: Path, hops: usize) -> Result<Path, String> {
        let mut p = path;
        for _ in 0..MAX_HOPS {
            if p.is_empty() {
                return Ok(p);
            }
            let attr = self
                .attr_at(&p)
                .ok_or_else(|| format!("{} does not exist", disp(&p)))?;
            match &attr.value {
                Value::Component(_) => return Ok(p),
                Value::Ref(r) | Value::Link(r, _) => {
                    p = self.lookup(r, &p[..p.len() - 1], hops + 1)?;
                }
                other => {
                    return Err(format!(
                        "{} is {}, not a component",
                        disp(&p),
                        other.type_name()
                    ))
                }
            }
        }
        Err("the references loop".into())
    }

    /// Where `r`, written in the component `container`, points.
    fn lookup(&self, r: &Reference, container: &[String], hops: usize) -> Result<Path, String> {
        if hops > MAX_HOPS {
            return Err("the references loop".into());
        }
        let mut cur = container.to_vec();
        for (i, part) in r.parts.iter().enumerate() {
            if i > 0 {
                cur = self.deref_component(cur, hops)?;
            }
            match part {
                RefPart::Root => cur.clear(),
                RefPart::This => {}
                RefPart::Parent => {
                    if cur.pop().is_none() {
                        return Err("PARENT of the root".into());
                    }
                }
                RefPart::Here(n) => {
                    let c = self
                        .comp_at(&cur)
                        .ok_or_else(|| format!("{} is not a component", disp(&cur)))?;
                    if c.get(n).is_none() {
                        return Err(format!("{} has no attribute `{n}`", disp(&cur)));
                    }
                    cur.push(n.clone());
                }
                RefPart::Attrib(n) => {
                    let mut scope = cur.clone();
                    loop {
                        if self.comp_at(&scope).is_some_and(|c| c.get(n).is_some()) {
                            scope.push(n.clone());
                            cur = scope;
                            break;
                        }
                        if scope.pop().is_none() {
                            return Err(format!(
                                "no attribute `{n}` in {} or any enclosing component",
                                disp(&cur)
                            ));
                        }
                    }
                }
            }
        }
        Ok(cur)
    }

    fn resolve_attr(&mut self, path: &[String]) -> Result<(), DescriptionError> {
        if self.done.contains(path) {
            return Ok(());
        }
        if let Some(i) = self.stack.iter().position(|p| p == path) {
            let last = self.stack.last().expect("non-empty").clone();
            let at = self.attr_at(&last).expect("on the stack").pos.clone();
            let chain: Vec<String> = self.stack[i..]
                .iter()
                .map(|p| disp(p))
                .chain(std::iter::once(disp(path)))
                .collect();
            let mut chain = chain.join(" -> ");
            if last == path {
                chain.push_str(
                    " (to take it from an enclosing component, write PARENT:ATTRIB name)",
                );
            }
            return Err(DescriptionError::ReferenceCycle {
                at,
                path: disp(&last),
                chain,
            });
        }
        let attr = self.attr_at(path).expect("resolve_attr on an attribute");
        if self.depth >= MAX_DEPTH {
            return Err(too_deep(
                &attr.pos,
                path,
                "references through references and nested components",
            ));
        }
        // A component's own attributes are resolved in place: only their
        // names are copied, not the subtree.
        let work = match &attr.value {
            Value::Ref(_) | Value::List(_) => Ok(attr.clone()),
            Value::Component(c) => Err(c.attrs().iter().map(|(n, _)| n.clone()).collect()),
            _ => Err(Vec::new()),
        };
        self.depth += 1;
        let result = self.resolve_attr_value(path, work);
        self.depth -= 1;
        result?;
        self.done.insert(path.to_vec());
        Ok(())
    }

    /// `work` is the attribute to resolve, or the names of the component's
    /// attributes to resolve in turn.
    fn resolve_attr_value(
        &mut self,
        path: &[String],
        work: Result<Attr, Vec<String>>,
    ) -> Result<(), DescriptionError> {
        match work {
            Ok(attr) => {
                self.stack.push(path.to_vec());
                let value = self.resolve_value(path, &attr)?;
                self.set_value(path, value);
                self.stack.pop();
            }
            Err(names) => {
                for name in names {
                    self.resolve_attr(&child(path, &name))?;
                }
            }
        }
        Ok(())
    }

    /// The value of `attr` (written at `path`, or an item of its list) with
    /// its references resolved.
    fn resolve_value(&mut self, path: &[String], attr: &Attr) -> Result<Value, DescriptionError> {
        match &attr.value {
            Value::Ref(r) => {
                let container = &path[..path.len() - 1];
                let target = self.lookup(r, container, 0).map_err(|message| {
                    DescriptionError::DanglingReference {
                        at: attr.pos.clone(),
                        path: disp(path),
                        reference: r.to_string(),
                        message,
                    }
                })?;
                if target.is_empty() {
                    return Err(DescriptionError::DanglingReference {
                        at: attr.pos.clone(),
                        path: disp(path),
                        reference: r.to_string(),
                        message: "it names the whole description".into(),
                    });
                }
                if r.lazy {
                    return Ok(Value::Link(r.clone(), target));
                }
                self.resolve_attr(&target)?;
                let value = &self.attr_at(&target).expect("looked up").value;
                let made = self.made + value_size(value);
                if made > MAX_SIZE {
                    return Err(too_large(&attr.pos, path));
                }
                let value = value.clone();
                self.made = made;
                Ok(value)
            }
            Value::List(items) => {
                let mut out = Vec::new();
                for item in items {
                    let value = self.resolve_value(path, item)?;
                    out.push(Attr {
                        value,
                        pos: item.pos.clone(),
                    });
                }
                Ok(Value::List(out))
            }
            other => Ok(other.clone()),
        }
    }

    // -----------------------------------------------------------------------
    // checking and output
    // -----------------------------------------------------------------------

    fn build(
        &self,
        name: &str,
        path: &[String],
        comp: &Component,
        host: &str,
    ) -> Result<ResolvedComponent, DescriptionError> {
        let kind = kind_of(&comp.types);
        let host = match comp.get("sfProcessHost").map(|a| &a.value) {
            Some(Value::Str(h)) => h.clone(),
            _ => host.to_string(),
        };
        let schema = schema(kind);
        let mut attributes = Vec::new();
        let mut members = Vec::new();
        for (attr_name, attr) in comp.attrs() {
            let attr_path = child(path, attr_name);
            let expected =
                schema.and_then(|s| s.iter().find(|(n, _)| n == attr_name).map(|(_, t)| *t));
            if let (Some(known), None) = (schema, expected) {
                let is_member = matches!(attr.value, Value::Component(_))
                    && matches!(kind, Kind::Compound | Kind::Sequence);
                if !is_member {
                    return Err(DescriptionError::UnknownAttribute {
                        at: attr.pos.clone(),
                        path: disp(&attr_path),
                        kind: kind.describe(),
                        hint: hint(attr_name, known),
                    });
                }
            }
            if let Some(ty) = expected {
                self.check(&attr_path, attr, ty)?;
            }
            match &attr.value {
                Value::Component(c) if expected.is_none() => {
                    members.push(self.build(attr_name, &attr_path, c, &host)?);
                }
                _ => {
                    let mut value = self.output(&attr_path, &attr.value, &host)?;
                    if kind == Kind::Domain
                        && (attr_name == "hostname" || attr_name == "domainName")
                        && value == ResolvedValue::Str(String::new())
                    {
                        value = ResolvedValue::Str(name.to_string());
                    }
                    attributes.push((attr_name.clone(), value));
                }
            }
        }
        if kind == Kind::Domain {
            check_addressing(path, comp)?;
        }
        if kind != Kind::Component && comp.get("sfProcessHost").is_none() {
            attributes.push(("sfProcessHost".into(), ResolvedValue::Str(host)));
        }
        Ok(ResolvedComponent {
            name: name.to_string(),
            path: disp(path),
            kind,
            extends: comp.types.clone(),
            attributes: Attributes(attributes),
            members,
        })
    }

    fn output(
        &self,
        path: &[String],
        value: &Value,
        host: &str,
    ) -> Result<ResolvedValue, DescriptionError> {
        Ok(match value {
            Value::Null => ResolvedValue::Null,
            Value::Bool(b) => ResolvedValue::Bool(*b),
            Value::Int(i) => ResolvedValue::Int(*i),
            Value::Real(r) => ResolvedValue::Real(*r),
            Value::Str(s) => ResolvedValue::Str(s.clone()),
            Value::List(items) => ResolvedValue::List(
                items
                    .iter()
                    .map(|a| self.output(path, &a.value, host))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Link(r, target) => ResolvedValue::Lazy {
                lazy: r.to_string(),
                target: disp(target),
            },
            Value::Ref(_) => unreachable!("eager references are resolved"),
            Value::Component(c) => ResolvedValue::Component(Box::new(self.build(
                path.last().map_or("", |s| s.as_str()),
                path,
                c,
                host,
            )?)),
        })
    }

    /// The component a value (written at `path`) is or links to, following
    /// lazy links — and lazy references whose target is itself a reference
    /// outside what was resolved (a top-level `a LAZY b`).
    fn target_component<'b>(
        &'b self,
        path: &[String],
        value: &'b Value,
    ) -> Result<Option<&'b Component>, String> {
        let mut v = value;
        let mut at: Path = path.to_vec();
        for _ in 0..MAX_HOPS {
            let next = match v {
                Value::Component(c) => return Ok(Some(c)),
                Value::Link(_, target) => target.clone(),
                Value::Ref(r) => self.lookup(r, &at[..at.len().saturating_sub(1)], 0)?,
                _ => return Ok(None),
            };
            v = &self
                .attr_at(&next)
                .ok_or_else(|| format!("{} does not exist", disp(&next)))?
                .value;
            at = next;
        }
        Err("the lazy references loop".into())
    }

    fn check(&self, path: &[String], attr: &Attr, ty: Ty) -> Result<(), DescriptionError> {
        let fail = |message: String| DescriptionError::Type {
            at: attr.pos.clone(),
            path: disp(path),
            message,
        };
        let found = attr.value.describe();
        match (ty, &attr.value) {
            (Ty::Str, Value::Str(_)) | (Ty::Bool, Value::Bool(_)) => Ok(()),
            (Ty::Count, Value::Int(i)) => {
                if *i >= 1 {
                    Ok(())
                } else {
                    Err(fail(format!("must be at least 1, found {i}")))
                }
            }
            (Ty::Str, _) => Err(fail(format!("expected a string, found {found}"))),
            (Ty::Bool, _) => Err(fail(format!("expected true or false, found {found}"))),
            (Ty::Count, _) => Err(fail(format!(
                "expected a whole number (at least 1), found {found}"
            ))),
            (Ty::Networks, Value::Str(s)) if !s.is_empty() => Ok(()),
            (Ty::Networks, Value::List(items)) if !items.is_empty() => {
                for item in items {
                    match &item.value {
                        Value::Str(s) if !s.is_empty() => {}
                        other => {
                            return Err(DescriptionError::Type {
                                at: item.pos.clone(),
                                path: disp(path),
                                message: format!(
                                    "a network is named by a non-empty string, found {}",
                                    other.describe()
                                ),
                            })
                        }
                    }
                }
                Ok(())
            }
            (Ty::Networks, _) => Err(fail(format!(
                "expected a site network's name (e.g. \"private\"), a list of them, or \
                 \"none\", found {}",
                if matches!(&attr.value, Value::List(_)) {
                    "an empty list".to_string()
                } else {
                    found
                }
            ))),
            (Ty::Ip, Value::Str(s)) if s.is_empty() || s == "dhcp" => Ok(()),
            (Ty::Ip, Value::Str(s)) => match s.parse::<std::net::Ipv4Addr>() {
                Ok(_) => Ok(()),
                Err(_) => Err(fail(format!(
                    "{s:?} is not an IPv4 address (four numbers from 0 to 255, e.g. \
                     10.214.0.10); \"dhcp\" lets the site assign one"
                ))),
            },
            (Ty::Ip, _) => Err(fail(format!(
                "expected an IPv4 address (e.g. \"10.214.0.10\") or \"dhcp\", found {found}"
            ))),
            (Ty::Storage, Value::Str(_)) | (Ty::Shell, Value::Null) => Ok(()),
            (Ty::Storage | Ty::Shell, v) => {
                let want = if ty == Ty::Storage {
                    Kind::StorageBackend
                } else {
                    Kind::Shell
                };
                let what = if ty == Ty::Storage {
                    "a storage backend (LoopbackStorageBackend, LVMStorageBackend, OverlayStorageBackend), a reference to one, or a site backend name"
                } else {
                    "a shell (BashShell), a reference to one, or NULL"
                };
                match self.target_component(path, v).map_err(fail)? {
                    Some(c) if kind_of(&c.types) == want => Ok(()),
                    Some(c) => Err(fail(format!(
                        "expected {what}, found a {}",
                        kind_of(&c.types).describe()
                    ))),
                    None => Err(fail(format!("expected {what}, found {found}"))),
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Str,
    Bool,
    /// A whole number, at least 1.
    Count,
    Storage,
    Shell,
    /// A network name or a non-empty list of them.
    Networks,
    /// An IPv4 address, or "dhcp" / "" (assigned).
    Ip,
}

/// A domain's `network` and `ip` together (each was type checked): a
/// static `ip` needs a network, and is on the first one; `none` stands alone.
fn check_addressing(path: &[String], comp: &Component) -> Result<(), DescriptionError> {
    let names: Vec<&str> = match comp.get("network").map(|a| &a.value) {
        Some(Value::Str(s)) => vec![s.as_str()],
        Some(Value::List(items)) => items
            .iter()
            .filter_map(|i| match &i.value {
                Value::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    if names.len() > 1 && names.contains(&"none") {
        let at = comp.get("network").map(|a| a.pos.clone());
        return Err(DescriptionError::Type {
            at: at.unwrap_or_else(|| comp.pos.clone()),
            path: disp(&child(path, "network")),
            message: "\"none\" means no network: it cannot be listed with others".into(),
        });
    }
    let Some(ip) = comp.get("ip") else {
        return Ok(());
    };
    let Value::Str(address) = &ip.value else {
        return Ok(());
    };
    let assigned = address.is_empty() || address == "dhcp";
    if !assigned && names.first().is_none_or(|n| *n == "none") {
        return Err(DescriptionError::Type {
            at: ip.pos.clone(),
            path: disp(&child(path, "ip")),
            message: format!(
                "static address {address} needs a network: name one with `network` \
                 (e.g. network \"private\"); the address is on the first one"
            ),
        });
    }
    Ok(())
}

fn kind_of(types: &[String]) -> Kind {
    for t in types {
        match t.as_str() {
            "DefaultXenDomain" => return Kind::Domain,
            "Sequence" => return Kind::Sequence,
            "Compound" => return Kind::Compound,
            "LoopbackStorageBackend" | "LVMStorageBackend" | "OverlayStorageBackend" => {
                return Kind::StorageBackend
            }
            "BashShell" => return Kind::Shell,
            _ => {}
        }
    }
    Kind::Component
}

const POOL: &[(&str, Ty)] = &[
    ("sfSyncTerminate", Ty::Bool),
    ("sfLivenessDelay", Ty::Count),
    ("sfLivenessFactor", Ty::Count),
    ("sfProcessHost", Ty::Str),
];

const DOMAIN: &[(&str, Ty)] = &[
    ("memory", Ty::Count),
    ("vcpus", Ty::Count),
    ("image", Ty::Str),
    ("kernel", Ty::Str),
    ("hostname", Ty::Str),
    // The site networks, one interface each, in order; "none": no network.
    ("network", Ty::Networks),
    // A static address on the first network; "dhcp" (or ""): assigned.
    ("ip", Ty::Ip),
    ("domainName", Ty::Str),
    ("storageBackend", Ty::Storage),
    ("disk", Ty::Count),
    ("saveImage", Ty::Bool),
    ("saveAs", Ty::Str),
    ("compress", Ty::Bool),
    ("sfProcessHost", Ty::Str),
    ("sfLivenessDelay", Ty::Count),
    ("sfLivenessFactor", Ty::Count),
    // The VO the domain is admitted for (else `sd start --vo`, else the
    // site's default_vo); no prelude default, so that those apply.
    ("vo", Ty::Str),
];

const STORAGE: &[(&str, Ty)] = &[
    ("baseImage", Ty::Str),
    ("domainName", Ty::Str),
    ("shell", Ty::Shell),
    ("size", Ty::Count),
    ("volumeGroup", Ty::Str),
    ("compress", Ty::Bool),
    ("saveImage", Ty::Bool),
    ("sfProcessHost", Ty::Str),
];

const SHELL: &[(&str, Ty)] = &[("shellCommand", Ty::Str), ("sfProcessHost", Ty::Str)];

fn schema(kind: Kind) -> Option<&'static [(&'static str, Ty)]> {
    match kind {
        Kind::Compound | Kind::Sequence => Some(POOL),
        Kind::Domain => Some(DOMAIN),
        Kind::StorageBackend => Some(STORAGE),
        Kind::Shell => Some(SHELL),
        Kind::Component => None,
    }
}

fn hint(name: &str, known: &[(&str, Ty)]) -> String {
    let best = known
        .iter()
        .map(|(n, _)| (distance(name, n), *n))
        .min()
        .filter(|(d, _)| *d <= 2);
    match best {
        Some((_, n)) => format!(" (did you mean `{n}`?)"),
        None => {
            let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
            format!(" (it knows: {})", names.join(", "))
        }
    }
}

/// Levenshtein distance, ASCII-case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
