# (shared by linux-install.sh and macos-install.sh: `spendgate mdm render` puts it in both)
MANIFEST="$DIR/.spendgate-installed"  # what this script placed under $DIR, one name a line: all --uninstall removes there
placed() { grep -qxF "$1" "$MANIFEST" 2>/dev/null || echo "$1" >> "$MANIFEST"; }
remove_placed() {  # never $DIR whole: a gateway on this host keeps its CA key, policy and gateway.env there
  if [ -f "$MANIFEST" ]; then
    while IFS= read -r f; do
      case "$f" in ''|.|..|*/*) continue ;; esac
      rm -rf "${DIR:?}/$f"
    done < "$MANIFEST"
    rm -f "$MANIFEST"
  else  # placed before the manifest: this kit's client files only, and a laptop's own CA and policy
    rm -f "$DIR/spendgate-ca.pem" "$DIR/spendgate-ca-bundle.pem" "$DIR/proxy.pac" "$DIR/site.json" "$DIR/spendgate.env" \
      "$DIR/spendgate.env.sh"
    if [ "$MODE" = laptop ]; then rm -rf "${DIR:?}/ca" "$DIR/policy.yaml"; fi
  fi
  rmdir "$DIR" 2>/dev/null || say "kept $DIR: it holds files this kit did not place"
}
