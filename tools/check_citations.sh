#!/usr/bin/env bash
# Fails when a citation of the repository's own documents does not resolve (make check-citations,
# part of make test).
#
# Scanned: ref/ fast/ kernels/ tests/ notebooks-c/ tools/ docs/ golden/ README.md Makefile.
#   - every docs/X.md named must exist (a one-letter capital name such as X is a placeholder);
#   - every "docs/X.md §N" (and §N.M, ranges §1.1–1.3 or §6–§7, lists "§1.3, §8.2" or "§3.5 / §4")
#     needs a heading numbered N in docs/X.md ("## 3. …", "### 3.1 …");
#   - "§11 #4" (lists "#1, #2", ranges "#1–2") needs entry 4 in that section: a table row "| 4 |";
#   - inside docs/model.md and docs/formats.md a bare "§N" refers to the file itself;
#   - a "§N" written right after "paper " is the paper's section and is not checked here.
# A citation's section list runs from the file name to the next ")", the next file name or the end
# of the line. Also refused: citations of documents that are not in the repository (the old
# "spec" / "ecosystem" notes and paths into a shared folder outside it).
#
# CITE_DEBUG=1 lists every citation checked. Before checking the tree, the script checks itself on a fixture of broken citations: each must
# fail, so a checker that cannot fail does not pass.
set -u
export LC_ALL=C
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.."

SCAN=(ref fast kernels tests notebooks-c tools docs golden README.md Makefile)
SELF_REF_DOCS=" docs/model.md docs/formats.md "
SECTION='([0-9]+(\.[0-9]+)*)'

bad=0
n_cites=0
report() { echo "check-citations: $1"; bad=1; }

# has_heading DOC N: DOC has a markdown heading numbered N.
has_heading() {
    local re=${2//./\\.}
    grep -qE "^#+ +$re\.?( |$)" "$1"
}

# has_entry DOC N K: the section numbered N of DOC has a table row whose first cell is K.
has_entry() {
    local re=${2//./\\.}
    awk -v re="^#+ +$re\\.?( |$)" -v k="$3" '
        /^#+ / { if (in_sec) { lvl = match($0, /[^#]/) - 1; if (lvl <= sec_lvl) in_sec = 0 }
                 if ($0 ~ re) { in_sec = 1; sec_lvl = match($0, /[^#]/) - 1 } }
        in_sec && $0 ~ "^\\| *" k " *\\|" { found = 1 }
        END { exit !found }' "$1"
}

# expand A B: A, the numbers between A and B when they differ only in the last component, and B.
expand() {
    local a=$1 b=$2
    if [[ -z $b ]]; then echo "$a"; return; fi
    local pa=${a%.*} pb=${b%.*} la=${a##*.} lb=${b##*.}
    [[ $a != *.* ]] && pa="" && la=$a
    [[ $b != *.* ]] && pb="" && lb=$b
    if [[ $pa == "$pb" ]] && ((la <= lb && lb - la < 100)); then
        local i
        for ((i = la; i <= lb; i++)); do echo "${pa:+$pa.}$i"; done
    else
        echo "$a"; echo "$b"
    fi
}

# check_segment WHERE DOC TEXT: the section list TEXT cites DOC.
check_segment() {
    local where=$1 doc=$2 seg=$3 last="" before tok n1 n2 s
    # One byte for § and an ASCII dash for –, so that bracket expressions work on bytes.
    seg=${seg//§/$'\001'}; seg=${seg//–/-}
    while [[ $seg =~ ^([^$'\001'#]*)([$'\001'#])$SECTION(.*)$ ]]; do
        before=${BASH_REMATCH[1]}; tok=${BASH_REMATCH[2]}; n1=${BASH_REMATCH[3]}; seg=${BASH_REMATCH[5]}; n2=""
        if [[ $seg =~ ^\ ?-\ ?$'\001'?$SECTION(.*)$ ]]; then n2=${BASH_REMATCH[1]}; seg=${BASH_REMATCH[3]}; fi
        if [[ $tok != "#" ]]; then
            if [[ $before =~ [Pp]aper(\'s)?\ $ ]]; then last=""; continue; fi
            for s in $(expand "$n1" "$n2"); do
                n_cites=$((n_cites + 1))
                [[ -n ${CITE_DEBUG:-} ]] && echo "cite $where $doc §$s"
                has_heading "$doc" "$s" || report "$where: $doc has no section §$s"
                last=$s
            done
        elif [[ -n $last ]]; then
            for s in $(expand "$n1" "$n2"); do
                n_cites=$((n_cites + 1))
                [[ -n ${CITE_DEBUG:-} ]] && echo "cite $where $doc §$last #$s"
                has_entry "$doc" "$last" "$s" || report "$where: $doc §$last has no entry #$s"
            done
        fi
    done
}

check_tree() {
    local paths=() p where file line text rest doc seg
    for p in "${SCAN[@]}"; do [[ -e $p ]] && paths+=("$p"); done
    while IFS= read -r line; do
        file=${line%%:*}; rest=${line#*:}; where="$file:${rest%%:*}"; text=${rest#*:}
        rest=$text
        while [[ $rest =~ docs/([A-Za-z0-9_./-]+\.md)(.*)$ ]]; do
            doc=docs/${BASH_REMATCH[1]}; rest=${BASH_REMATCH[2]}
            [[ $doc =~ ^docs/[A-Z]\.md$ ]] && continue # a placeholder in prose ("docs/X.md §N")
            if [[ ! -f $doc ]]; then report "$where: $doc does not exist"; continue; fi
            seg=${rest%%docs/*}; seg=${seg%%)*}
            check_segment "$where" "$doc" "$seg"
        done
        if [[ $SELF_REF_DOCS == *" $file "* ]]; then
            seg=${text%%docs/*}
            check_segment "$where" "$file" "$seg"
        fi
    done < <(grep -rInE --exclude=check_citations.sh --exclude-dir=node_modules 'docs/[A-Za-z0-9_./-]+\.md|§' "${paths[@]}" |
             grep -E 'docs/[A-Za-z0-9_./-]+\.md|^docs/(model|formats)\.md:')
    while IFS= read -r line; do
        report "${line%%:*}:$(cut -d: -f2 <<<"$line"): cites a document outside the repository: ${line#*:*:}"
    done < <(grep -rInE --exclude=check_citations.sh --exclude-dir=node_modules 'spec §|spec\.md|ecosystem\.md|\.\./shared|shared/docs' "${paths[@]}")
}

# The fixture: a document with sections 1, 1.1, 1.2, 11 (entries #1, #2) and one citing line per case.
self_test() {
    local tmp case_line ok=0
    tmp=$(mktemp -d) || return 1
    mkdir -p "$tmp/docs" "$tmp/ref" "$tmp/tools"
    printf '# T\n## 1. One\n### 1.1 A\n### 1.2 B\n## 11. Register\n| # | x |\n|---|---|\n| 1 | a |\n| 2 | b |\n## 12. After\n| 3 | c |\n' \
        >"$tmp/docs/model.md"
    cp "$SELF" "$tmp/tools/check_citations.sh"
    printf '%s\n' '/* docs/model.md §1.1–1.2, §11 #1, #2 (paper §9.9) docs/model.md §1 */' >"$tmp/ref/good.c"
    (cd "$tmp" && bash tools/check_citations.sh --tree-only >/dev/null) || { echo "check-citations: self-test: a valid citation was refused"; ok=1; }
    for case_line in 'docs/model.md §2' 'docs/model.md §1.3' 'docs/model.md §1.1–1.3' 'docs/model.md §11 #3' \
        'docs/model.md §11 #1–3' 'docs/model.md §11 #2, #3' 'docs/missing.md' 'spec §3.5' 'see ecosystem.md'; do
        printf '/* %s */\n' "$case_line" >"$tmp/ref/bad.c"
        if (cd "$tmp" && bash tools/check_citations.sh --tree-only >/dev/null); then
            echo "check-citations: self-test: '$case_line' was accepted"
            ok=1
        fi
    done
    rm -rf "$tmp"
    return $ok
}

if [[ ${1:-} != --tree-only ]]; then
    self_test || exit 1
fi
check_tree
[[ $bad == 0 ]] && [[ ${1:-} != --tree-only ]] && echo "check-citations: $n_cites citations of docs/ sections resolve"
exit $bad
