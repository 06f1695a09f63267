# Filters the verbose build output to one line per compiled file, from ninja's progress lines
# ("[3/17] /usr/bin/c++ ... -c /repo/csrc/ops/x.cpp -o ..."), plus the build's own [proxynas_fast] lines, each once
# (pip runs setup.py twice, to ask for the build requirements and then to build), and errors.
/\[proxynas_fast\]/ { if (!seen[$0]++) print "  " $0; fflush(); next }
match($0, /\[[0-9]+\/[0-9]+\]/) {
  step = substr($0, RSTART, RLENGTH); src = ""
  for (i = 1; i < NF; i++) if ($i == "-c") src = $(i + 1)
  sub(/^.*\/csrc\//, "csrc/", src)
  tool = ($0 ~ /nvcc/) ? "nvcc" : "c++"
  if (src != "") print "  " step " compiling " src " (" tool ")"
  else if ($0 ~ /-shared/) print "  " step " linking"
  fflush(); next
}
/[Ee]rror[: ]/ { print "  " $0; fflush() }
