#!/usr/bin/env python3
"""Count import circles between the top-level modules of each crate's src/
(a module uses another if it names crate::other). Prints each strongly
connected component with more than one module."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else '.'
total = 0
for crate in sorted(os.listdir(root)):
    src = os.path.join(root, crate, 'src')
    if not os.path.isdir(src): continue
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'): continue
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, src)
            top = rel.split(os.sep)[0].removesuffix('.rs')
            if top in ('main', 'bin'): continue
            text = open(p).read()
            # drop test modules
            i = text.find('#[cfg(test)]\nmod tests')
            if i >= 0: text = text[:i]
            mods.setdefault(top, set())
            # crate::x references and `use crate::{a, b::c}` groups
            for m in re.finditer(r'crate::(\{[^}]*\}|\w+)', text):
                g = m.group(1)
                names = re.findall(r'(?:^|[{,\s])(\w+)', g.strip('{}')) if g.startswith('{') else [g]
                for n in names:
                    if n != top and n not in ('self',):
                        mods[top].add(n)
    graph = {m: {d for d in deps if d in mods} for m, deps in mods.items()}
    # Tarjan
    index = {}; low = {}; stack = []; on = set(); sccs = []; c = [0]
    def sc(v):
        index[v] = low[v] = c[0]; c[0] += 1; stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            sccs.append(comp)
    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index: sc(v)
    for comp in sccs:
        if len(comp) > 1:
            total += 1
            print(f'{crate}: circle among {sorted(comp)}')
print(f'import circles: {total}')
