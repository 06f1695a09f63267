"""Per-op CPU timings of the fused-cell kernels against the PyTorch ops they replace (1 intra-op thread, best of
7 after a warm-up call; backward timed on a retained graph). Prints the markdown table of docs/PERFORMANCE.md.

Run: `python benchmarks/op_timings.py`. The speed goals themselves are checked by bench_search_step.py."""
import time, torch, torch.nn.functional as F
import proxynas_fast.ops as ops
torch.set_num_threads(1)
def best(f, r=7):
    f(); ts=[]
    for _ in range(r):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return min(ts)*1e3
N=64
rows=[]
for (C,H,k,d,s,m,label) in [(16,32,3,1,1,1,"3x3, dil 1"),(16,32,5,2,1,1,"5x5, dil 2"),(16,32,3,1,1,4,"3x3, dil 1, multiplier 4"),
                            (64,8,5,2,1,4,"8x8 planes, C=64, 5x5 dil 2, multiplier 4"),(32,32,5,1,2,2,"stride 2, 5x5, multiplier 2")]:
    x=torch.randn(N,C,H,H,requires_grad=True); w=torch.randn(m*C,1,k,k,requires_grad=True); p=d*(k-1)//2
    y=ops.dw_conv2d_reference(x,w,s,p,d); g=torch.randn_like(y)
    tf_ref=best(lambda: ops.dw_conv2d_reference(x,w,s,p,d))
    yr=ops.dw_conv2d_reference(x,w,s,p,d)
    tb_ref=best(lambda: torch.autograd.grad(yr,(x,w),g,retain_graph=True))
    tf=best(lambda: ops.dw_conv2d(x,w,s,p,d))
    yf=ops.dw_conv2d(x,w,s,p,d)
    tb=best(lambda: torch.autograd.grad(yf,(x,w),g,retain_graph=True))
    rows.append(f"| dw conv: {label} | {tf_ref:.1f} / {tb_ref:.1f} | {tf:.1f} / {tb:.1f} |")
for (is_max,s,label) in [(True,1,"max 3x3, stride 1"),(False,1,"avg 3x3, stride 1"),(True,2,"max 3x3, stride 2"),(False,2,"avg 3x3, stride 2")]:
    x=torch.randn(N,16,32,32,requires_grad=True)
    y=ops.pool2d_reference(x,is_max,3,s,1); g=torch.randn_like(y)
    tf_ref=best(lambda: ops.pool2d_reference(x,is_max,3,s,1))
    yr=ops.pool2d_reference(x,is_max,3,s,1)
    tb_ref=best(lambda: torch.autograd.grad(yr,x,g,retain_graph=True))
    tf=best(lambda: ops.pool2d(x,is_max,3,s,1))
    yf=ops.pool2d(x,is_max,3,s,1)
    tb=best(lambda: torch.autograd.grad(yf,x,g,retain_graph=True))
    rows.append(f"| pool: {label} | {tf_ref:.1f} / {tb_ref:.1f} | {tf:.1f} / {tb:.1f} |")
print("| case (N=64, C=16, 32x32 unless stated) | PyTorch fwd / bwd (ms) | proxynas_fast fwd / bwd (ms) |")
print("| --- | --- | --- |")
print("\n".join(rows))
