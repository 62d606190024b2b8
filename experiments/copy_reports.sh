# Sourced by the experiment scripts: copy_reports NAME copies select's reports from
# workdirs/NAME/ into experiments/results/NAME/ (those that exist).
copy_reports() {
  mkdir -p "experiments/results/$1"
  for report in ranking.md ranking.csv scores.png pareto.png results.json; do
    if [[ -f "workdirs/$1/$report" ]]; then
      cp "workdirs/$1/$report" "experiments/results/$1/"
    fi
  done
}
