# What the scripts share; `source "$(dirname "$0")/lib.sh"` (bash).

# Seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }

# The median of the numbers on stdin, one per line (the mean of the middle
# two for an even count).
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
