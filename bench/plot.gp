# Plots build/bench/<mode>/samples.tsv of bench/run-bench.sh.
# gnuplot -e "outdir='build/bench'; modes='none ksm ksm10x memdedup memdedup+ksm'" bench/plot.gp
if (!exists("outdir")) outdir = "build/bench"
if (!exists("modes")) modes = "none ksm ksm10x memdedup memdedup+ksm"
set terminal pngcairo size 1000,800 noenhanced
set output outdir."/memory.png"
set datafile separator "\t"
set multiplot layout 2,1 title "Two guests reading the same image (2 x 512 MB, TCG)"
set grid
set key below horizontal width 3
set xlabel "seconds since the guests started"
set ylabel "fleet PSS (MB)"
set yrange [0:*]
# samples.tsv: 1 t, 2 pss_kb, ..., 8 ksmd_cpu_s, 9 agent_cpu_s, 10 alive
plot for [m in modes] outdir."/".m."/samples.tsv" \
     using 1:($10 == 2 ? $2 / 1024 : 1/0) with lines lw 2 title m
set ylabel "dedup CPU (s): ksmd + memdedup threads and memdedupd"
plot for [m in modes] outdir."/".m."/samples.tsv" \
     using 1:($10 == 2 ? $8 + $9 : 1/0) with lines lw 2 title m
unset multiplot
