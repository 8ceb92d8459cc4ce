#!/usr/bin/env bash
# Fails when a file includes a layer above its own (make check-layers, part of make test).
#
# The layers of ref/, bottom to top, and what each may include besides itself (docs/architecture.md):
#   base       nothing
#   model      base
#   tokenizer  base                 (beside the model: neither knows the other)
#   train      base model
#   ep         base model
#   ref/ (top) base model ep        backend.h: the one seam to fast/
#   generate   base model ep top
#   serve      base model tokenizer ep top generate   (the HTTP server over generate's scheduler)
#   cli        everything
#   fast/      base model ep top    (the GPU backend sits at backend.h's level)
#   kernels/   nothing of ref/ (plain parameter structs only)
# An include without a folder must name a file of the including file's own folder, or of ref/ (top).
set -u
cd "$(dirname "$0")/.."
allowed() {
    case $1 in
        base) echo "" ;;
        model) echo "base" ;;
        tokenizer) echo "base" ;;
        train) echo "base model" ;;
        ep) echo "base model" ;;
        top) echo "base model ep" ;;
        generate) echo "base model ep top" ;;
        serve) echo "base model tokenizer ep top generate" ;;
        cli) echo "base model tokenizer train ep top generate serve" ;;
        fast) echo "base model ep top" ;;
        kernels) echo "" ;;
    esac
}
bad=0
check_file() { # file layer dir
    local f=$1 layer=$2 dir=$3 line inc folder ok
    while IFS= read -r line; do
        inc=${line#*\"}; inc=${inc%%\"*}
        if [[ $inc == */* ]]; then
            folder=${inc%%/*}
            [[ $folder == .. || $folder == "$layer" ]] && continue
            [[ -e ref/$inc ]] || continue # not a ref/ header (e.g. a path of the including tree)
            ok=0
            for a in $(allowed "$layer"); do [[ $a == "$folder" ]] && ok=1; done
            [[ $ok == 1 ]] || { echo "check-layers: $f includes \"$inc\": $layer may include only: $(allowed "$layer" | sed 's/^$/nothing else/')"; bad=1; }
        else
            [[ -e $dir/$inc ]] && continue
            if [[ -e ref/$inc ]]; then
                ok=0
                for a in $(allowed "$layer"); do [[ $a == top ]] && ok=1; done
                [[ $layer == top || $ok == 1 ]] || { echo "check-layers: $f includes \"$inc\" (ref/$inc, the top layer): $layer may include only: $(allowed "$layer")"; bad=1; }
            else
                # not in its own folder nor ref/: a header found through another -I path (fast/, kernels/)
                case $layer in fast|kernels) ;; *) echo "check-layers: $f includes \"$inc\", which is neither in $dir/ nor in ref/"; bad=1 ;; esac
            fi
        fi
    done < <(grep -h '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f")
}
for d in base model tokenizer train ep generate serve cli; do
    for f in ref/$d/*.[ch]; do check_file "$f" "$d" "ref/$d"; done
done
for f in ref/*.[ch]; do check_file "$f" top ref; done
for f in fast/*.[ch] fast/*.cu; do [[ -e $f ]] && check_file "$f" fast fast; done
for f in kernels/*; do check_file "$f" kernels kernels; done
n=$(ls ref/*/*.[ch] ref/*.[ch] fast/* kernels/* | wc -l)
[[ $bad == 0 ]] && echo "check-layers: $n files, every include points down"
exit $bad
