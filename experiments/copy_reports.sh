# Sourced by the experiment scripts: copy_reports NAME copies the reports of select (ranking,
# plots, results.json) or of a pretraining run (report.md, curves.png, final.json) from
# workdirs/NAME/ into experiments/results/NAME/ (those that exist).
copy_reports() {
  mkdir -p "experiments/results/$1"
  for report in ranking.md ranking.csv scores.png pareto.png results.json report.md \
      curves.png final.json; do
    if [[ -f "workdirs/$1/$report" ]]; then
      cp "workdirs/$1/$report" "experiments/results/$1/"
    fi
  done
}
