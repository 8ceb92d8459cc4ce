# gnuplot script for docs/experiments.md (`make experiments`). Variable dir = data directory.
set terminal pngcairo size 900,520 font "DejaVu Sans,11"
set key top right
set grid

set output "docs/img/balance_maxvio.png"
set title "Load balance during training (KJV, DeepSeek-V3-shaped model, 16 experts top-4)"
set xlabel "step"; set ylabel "MaxVio (mean over MoE layers, per step)"
plot dir."/bias.train.dat" u 1:3 w l lw 2 t "aux-loss-free bias update, gamma = 0.001", \
     dir."/bias10.train.dat" u 1:3 w l lw 2 t "aux-loss-free bias update, gamma = 0.01", \
     dir."/auxloss.train.dat" u 1:3 w l lw 2 t "auxiliary loss only (alpha = 0.01)", \
     dir."/none.train.dat" u 1:3 w l lw 2 t "neither"

set output "docs/img/balance_val.png"
set title "Validation loss of the main model"
set ylabel "cross-entropy (nats/token)"
plot dir."/bias.val.dat" u 1:2 w lp lw 2 t "aux-loss-free bias update, gamma = 0.001", \
     dir."/bias10.val.dat" u 1:2 w lp lw 2 t "aux-loss-free bias update, gamma = 0.01", \
     dir."/auxloss.val.dat" u 1:2 w lp lw 2 t "auxiliary loss only", \
     dir."/none.val.dat" u 1:2 w lp lw 2 t "neither"

set output "docs/img/mtp_val.png"
set title "Validation loss of the main model with and without the MTP objective"
plot dir."/bias.val.dat" u 1:2 w lp lw 2 t "lambda = 0.3 (MTP depth 1)", \
     dir."/nomtp.val.dat" u 1:2 w lp lw 2 t "lambda = 0"

set terminal pngcairo size 1500,420 font "DejaVu Sans,10"
set output "docs/img/balance_heat.png"
unset key; unset grid
set multiplot layout 1,4 title "Expert load / mean load in MoE layer 1, per 10-step window (1 = balanced)"
set xlabel "expert"; set ylabel "window (10 steps)"
set cbrange [0:3]
set xrange [-0.5:15.5]; set yrange [-0.5:24.5]
set palette defined (0 "white", 1 "#3b6fb6", 2 "#e8a33d", 3 "#b3261e")
set title "bias, gamma = 0.001"; plot dir."/bias.heat.dat" matrix w image
set title "bias, gamma = 0.01"; plot dir."/bias10.heat.dat" matrix w image
set title "auxiliary loss"; plot dir."/auxloss.heat.dat" matrix w image
set title "neither"; plot dir."/none.heat.dat" matrix w image
unset multiplot
