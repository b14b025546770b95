"""Differential test of our JDL parser against HTCondor's ClassAd library.

Run by scripts/classad-conformance, which supplies the venv and our
sd-classad-json binary. For every input: do both accept or both refuse,
are literal values equal, and does our grouping of operators evaluate
the same as the reference's reading of the original text.
"""
import json, os, subprocess, sys, tempfile
from collections import Counter

import classad2

ours_bin, corpus = sys.argv[1], sys.argv[2]


def inputs():
    for name in sorted(os.listdir(corpus)):
        path = os.path.join(corpus, name)
        if name == "edge-cases.txt":
            case, lines = None, []
            for line in open(path, encoding="utf-8").read().split("\n"):
                if line.startswith("==== "):
                    if case:
                        yield case, "\n".join(lines)
                    case, lines = line[5:], []
                elif case:
                    lines.append(line)
            if case:
                yield case, "\n".join(lines)
        else:
            yield name, open(path, encoding="utf-8").read()


def reference(text):
    # A JDL file may be a bare list of attributes; gLite reads it as a record.
    if not text.lstrip().startswith("["):
        text = "[" + text + "]"
    try:
        return classad2.ClassAd(text), None
    except Exception as e:  # the library raises several types
        return None, f"{type(e).__name__}: {e}"


def py_value(v):
    """Our JSON literal as the Python value classad2 evaluates to."""
    if v == "undefined":
        return classad2.Value.Undefined
    if v == "error":
        return classad2.Value.Error
    if isinstance(v, list):
        return [py_value(x) for x in v]
    (kind, x), = v.items()
    return x


def same(a, b):
    if isinstance(a, list) or hasattr(a, "__iter__") and not isinstance(a, (str, bytes)):
        try:
            a = list(a)
        except TypeError:
            pass
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, classad2.ExprTree):
        a = a.eval()
    return type(a) is type(b) and a == b or repr(a) == repr(b)


def evaluate(ad, key):
    # The reference cannot evaluate very long chains (its evaluator recurses).
    try:
        return ad.eval(key)
    except Exception as e:
        return f"cannot evaluate: {e}"


def grouping_context(ad, expr):
    """A copy of ad whose free names are bound to distinct numbers, so that
    a different grouping evaluates to a different value."""
    ctx = classad2.ClassAd(str(ad))
    for i, name in enumerate(sorted(ad.externalRefs(expr))):
        try:
            ctx[name] = 3 + 2 * i
        except Exception:  # a scoped name (other.X): stays undefined
            pass
    return ctx


with tempfile.TemporaryDirectory() as tmp:
    cases = list(inputs())
    paths = []
    for i, (name, text) in enumerate(cases):
        p = os.path.join(tmp, f"{i:04d}.jdl")
        open(p, "w", encoding="utf-8").write(text)
        paths.append(p)
    out = subprocess.run([ours_bin, *paths], capture_output=True, text=True, check=True).stdout
    ours_all = [json.loads(line) for line in out.splitlines()]

kinds, expected, unexpected = Counter(), [], []
checked_values = checked_groupings = 0
for (name, text), ours in zip(cases, ours_all):
    ref, ref_error = reference(text)
    diffs = []
    if ours["ok"] and ref is None:
        diffs.append(("we accept, reference refuses", ref_error))
    elif not ours["ok"] and ref is not None:
        diffs.append(("we refuse, reference accepts", ours["error"].split(": ", 1)[1]))
    elif ours["ok"]:
        for attr in ours["attributes"]:
            key = attr["name"]
            if key not in ref:
                diffs.append(("attribute missing in reference", key))
                continue
            if attr["value"] is not None:
                checked_values += 1
                got = ref.eval(key)
                if not same(got, py_value(attr["value"])):
                    diffs.append(("value", f"{key}: ours {attr['value']} reference {got!r}"))
            else:
                checked_groupings += 1
                expr = ref.lookup(key)
                ctx = grouping_context(ref, expr)
                try:
                    ctx["__sd_ours"] = classad2.ExprTree(attr["parens"])
                except Exception:
                    diffs.append(("grouping", f"{key}: reference cannot read our {attr['parens']}"))
                    continue
                a, b = evaluate(ctx, key), evaluate(ctx, "__sd_ours")
                if repr(a) != repr(b):
                    diffs.append(("grouping", f"{key}: reference {expr} = {a!r}, ours {attr['parens']} = {b!r}"))
    for kind, detail in diffs:
        kinds[kind] += 1
        (expected if name.startswith("bydesign-") else unexpected).append((name, kind, detail))
    if name.startswith("bydesign-") and not diffs:
        unexpected.append((name, "by-design difference no longer differs", ""))

agree = len(cases) - len({n for n, _, _ in expected + unexpected})
print(f"classad-conformance: {len(cases)} inputs against htcondor classad2 {classad2.version()}")
print(f"  agreements: {agree}   literal values compared: {checked_values}   groupings compared: {checked_groupings}")
for kind, n in sorted(kinds.items()):
    print(f"  {kind}: {n}")
print(f"differences by design ({len(expected)}):")
for name, kind, detail in expected:
    print(f"  {name}: {kind}: {detail}")
if unexpected:
    print(f"UNEXPECTED differences ({len(unexpected)}):")
    for name, kind, detail in unexpected:
        print(f"  {name}: {kind}: {detail}")
    sys.exit(1)
print("no unexpected difference")
