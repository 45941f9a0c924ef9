#!/usr/bin/env python3
"""The longest functions under */src (non-test code), by line count from
`fn` to its closing brace at the same indentation."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else '.'
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
out = []
for dirpath, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d not in ('target', '.git', 'node_modules')]
    if '/src' not in dirpath.replace(root, ''): continue
    for f in files:
        if not f.endswith('.rs'): continue
        p = os.path.join(dirpath, f)
        lines = open(p).read().split('\n')
        for i, l in enumerate(lines):
            if l.startswith('#[cfg(test)]'): break
            m = re.match(r'^(\s*)(pub(\([^)]*\))? )?(async )?fn (\w+)', l)
            if not m: continue
            ind = m.group(1)
            for j in range(i, len(lines)):
                if lines[j] == ind + '}' or (j == i and l.rstrip().endswith('}')) or (lines[j].startswith(ind + '}') and j > i and lines[j].strip() in ('}', '};')):
                    out.append((j - i + 1, os.path.relpath(p, root), m.group(5)))
                    break
                if lines[j].rstrip().endswith(';') and j == i: break
for length, path, name in sorted(out, reverse=True)[:n]:
    print(f'{length:5} {path}::{name}')
