# gnuplot script for docs/experiments.md (`make experiments-fp8`). Variable dir = data directory.
# fp8_gap.dat: step, then the windowed training-loss gap (%) of fp8 tensor nopromote e5m2 moments32
# fp32b — the order of FP8_ARMS after the fp32 base (fp8_report writes them so).
set terminal pngcairo size 900,520 font "DejaVu Sans,11"
set key top right
set grid

set output "docs/img/fp8_gap.png"
set title "FP8 training vs FP32: relative gap of the training loss (10-step means, same batches)"
set xlabel "step (8 x 256 tokens)"; set ylabel "(L(arm) - L(fp32)) / L(fp32)  (%)" noenhanced
set yrange [-0.5:0.6]; set key top left font ",9"
plot dir."/fp8_gap.dat" u 1:2 w l lw 3 lc rgb "#1f77b4" t "FP8 recipe (the paper's)", \
     dir."/fp8_gap.dat" u 1:3 w l lw 2 lc rgb "#d62728" t "(a) per-tensor scales", \
     dir."/fp8_gap.dat" u 1:4 w l lw 2 lc rgb "#ff7f0e" t "(b) no promotion (14-bit accumulation over all K)", \
     dir."/fp8_gap.dat" u 1:5 w l lw 2 lc rgb "#2ca02c" t "(c) E5M2 gradients", \
     dir."/fp8_gap.dat" u 1:6 w l lw 2 lc rgb "#9467bd" t "(d) FP32 moments", \
     dir."/fp8_gap.dat" u 1:7 w l lw 2 dt 3 lc rgb "gray40" t "FP32 from weights 3e-5 larger (noise floor)", \
     0.25 w l dt 2 lc rgb "black" t "the paper's 0.25 %", -0.25 w l dt 2 lc rgb "black" notitle

set output "docs/img/fp8_val.png"
set title "Validation loss of the main model (8 fixed batches)"
set ylabel "cross-entropy (nats/token)"
set yrange [4.5:6.3]; set key top right font ",10"

plot dir."/fp8_val.dat" u 1:2 w lp lw 2 lc rgb "black" t "FP32", \
     dir."/fp8_val.dat" u 1:4 w lp lw 2 lc rgb "#1f77b4" t "FP8 recipe", \
     dir."/fp8_val.dat" u 1:6 w lp lw 2 lc rgb "#d62728" t "(a) per-tensor scales", \
     dir."/fp8_val.dat" u 1:8 w lp lw 2 lc rgb "#ff7f0e" t "(b) no promotion", \
     dir."/fp8_val.dat" u 1:10 w lp lw 2 lc rgb "#2ca02c" t "(c) E5M2 gradients", \
     dir."/fp8_val.dat" u 1:12 w lp lw 2 lc rgb "#9467bd" t "(d) FP32 moments", \
     dir."/fp8_val.dat" u 1:14 w lp lw 2 dt 3 lc rgb "gray40" t "FP32, weights 3e-5 larger"


set output "docs/img/fp8_val_gap.png"
set title "Relative gap of the validation loss to FP32"
set ylabel "(L(arm) - L(fp32)) / L(fp32)  (%)" noenhanced
set yrange [-0.5:0.6]; set key top left font ",9"
plot dir."/fp8_val.dat" u 1:5 w lp lw 3 lc rgb "#1f77b4" t "FP8 recipe", \
     dir."/fp8_val.dat" u 1:7 w lp lw 2 lc rgb "#d62728" t "(a) per-tensor scales", \
     dir."/fp8_val.dat" u 1:9 w lp lw 2 lc rgb "#ff7f0e" t "(b) no promotion", \
     dir."/fp8_val.dat" u 1:11 w lp lw 2 lc rgb "#2ca02c" t "(c) E5M2 gradients", \
     dir."/fp8_val.dat" u 1:13 w lp lw 2 lc rgb "#9467bd" t "(d) FP32 moments", \
     dir."/fp8_val.dat" u 1:15 w lp lw 2 dt 3 lc rgb "gray40" t "FP32, weights 3e-5 larger (noise floor)", \
     0.25 w l dt 2 lc rgb "black" t "0.25 %", -0.25 w l dt 2 lc rgb "black" notitle
