#!/usr/bin/env bash
# Offline `dvc plots show`: vega, vega-lite and vega-embed from the npm registry (pinned, checked
# by sha256), inlined into an HTML template that .dvc/config.local points DVC to. The page DVC
# then writes (dvc_plots/index.html) loads nothing from the network. Run by `make setup`.
#   usage: scripts/offline_plots.sh VENDOR_DIR DVC
set -euo pipefail
dir=$1 dvc=$2
packages=(vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0)  # the majors DVC's own page uses
sums="1b8504b6731c5311be3269c4d84ca996a5cc293bc772283293ede20c490e16c3  vega-5.33.1.tgz
e4cbfdd8f6f1abe381c59cd558fd6a559c12b1496bfdf2e0c3295263a40fe4da  vega-lite-5.23.0.tgz
ecf1ee709c2bac9e0a4ead6908114b05b62c71493e10a8a4308109bb070f8eb1  vega-embed-6.29.0.tgz"

command -v npm >/dev/null || {
  echo "offline plots: npm is needed once to fetch vega (apt-get install npm), then run make setup" >&2
  exit 1
}
mkdir -p "$dir"
(cd "$dir" && npm pack --silent "${packages[@]}" >/dev/null && sha256sum --quiet -c - <<<"$sums")

script() {  # <script> holding the package's browser build; "</script" would end it early
  printf '<script>\n'
  tar xzf "$dir/$1.tgz" -O "package/build/$2.min.js" | sed 's#</script#<\\/script#gI'
  printf '\n</script>\n'
}
tmp=$dir/plots.html.tmp
{
  # DVC fills {refresh_tag} and {plot_divs}; no {scripts}, which would add its CDN tags
  printf '<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<meta charset="utf-8">\n<title>DVC Plot</title>\n'
  script vega-5.33.1 vega
  script vega-lite-5.23.0 vega-lite
  script vega-embed-6.29.0 vega-embed
  # SVG: sharp when zoomed, and its marks can be counted by a test
  printf '<script>(() => { const embed = window.vegaEmbed;\n'
  printf '  window.vegaEmbed = (el, spec, opt) => embed(el, spec, {renderer: "svg", ...opt}); })();</script>\n'
  printf '<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'
} >"$tmp"
mv "$tmp" "$dir/plots.html"
rm -f "$dir"/*.tgz

# config.local is the machine's own DVC config (git-ignored): the path is relative to .dvc/
if [ -d .dvc ]; then
  "$dvc" config --local plots.html_template "$(realpath --relative-to=.dvc "$dir/plots.html")"
  echo "offline plots: dvc plots show uses $dir/plots.html (vega inlined, no network)"
fi
