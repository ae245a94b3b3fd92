"""Rewrites cuda/*.cu and *.cuh for the host emulator (run.sh): `extern __shared__` arrays
become the emulated block's dynamic shared memory, and `kernel<<<grid, block, smem, stream>>>(args)`
becomes `::emu::launch(key, grid, block, smem, [&] { kernel(args); })`."""
import re, sys, pathlib
src_dir, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out_dir.mkdir(parents=True, exist_ok=True)
def find_close(s, i, open_c='(', close_c=')'):
    depth = 0
    for j in range(i, len(s)):
        if s[j] == open_c: depth += 1
        elif s[j] == close_c:
            depth -= 1
            if depth == 0: return j
    raise ValueError("unbalanced")
for f in list(src_dir.glob("*.cu")) + list(src_dir.glob("*.cuh")):
    s = f.read_text()
    s = re.sub(r"extern __shared__ float4 (\w+)\[\];", r"float4* \1 = reinterpret_cast<float4*>(::emu::dyn);", s)
    out = []; i = 0
    while True:
        j = s.find("<<<", i)
        if j < 0: out.append(s[i:]); break
        # kernel expression: back to the start of the statement token
        k = j
        depth = 0
        while k > 0:
            c = s[k - 1]
            if c == '>': depth += 1
            elif c == '<': depth -= 1
            elif depth == 0 and not (c.isalnum() or c in "_:"): break
            k -= 1
        name = s[k:j]
        e = s.find(">>>", j)
        cfg = s[j + 3:e]
        p0 = s.index("(", e)
        p1 = find_close(s, p0)
        args = s[p0 + 1:p1]
        key = "(const void*)kernel" if name.strip() == "kernel" else "nullptr"
        parts = [x.strip() for x in re.split(r",(?![^()]*\))", cfg)]
        out.append(s[i:k])
        out.append(f"::emu::launch({key}, dim3({parts[0]}), dim3({parts[1]}), {parts[2]}, [&] {{ {name}({args}); }})")
        i = p1 + 1
    (out_dir / (f.name.replace(".cu", ".emu.cpp") if f.suffix == ".cu" else f.name)).write_text("".join(out))
