# Homebrew formula for agentidd (macOS and Linux). The release script fills in url and sha256 for each tag.
#   brew install ./packaging/homebrew/agentidd.rb      # or from a tap
#   brew services start agentidd                        # per-user LaunchAgent / systemd --user unit
# `brew services` writes its own agent (label homebrew.mxcl.agentidd); don't also run `agentidd service install`,
# or two daemons race for the socket.
class Agentidd < Formula
  desc "Per-user daemon giving local AI agents Entra Agent ID on-behalf-of tokens"
  homepage "https://github.com/agentidd/agentidd"
  url "https://github.com/agentidd/agentidd/archive/refs/tags/v0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  head "https://github.com/agentidd/agentidd.git", branch: "main"

  depends_on "go" => :build

  def install
    ENV["CGO_ENABLED"] = "0"
    system "go", "build", *std_go_args(ldflags: "-s -w"), "./cmd/agentidd"
    doc.install "docs/install.md", "README.md", "SECURITY.md"
  end

  def caveats
    <<~EOS
      agentidd needs a config before it can start:
        #{opt_bin}/agentidd --help
      and docs in #{doc}/install.md. Then start it for your user:
        brew services start agentidd
    EOS
  end

  service do
    # No --config: the daemon reads $AGENTIDD_CONFIG or the per-user default path.
    run [opt_bin/"agentidd", "run"]
    run_at_load true
    # Restart after a crash or error exit only, like packaging/launchd/dev.agentidd.plist.
    keep_alive successful_exit: false
    process_type :background
    log_path var/"log/agentidd.out.log"
    error_log_path var/"log/agentidd.err.log"
  end

  test do
    assert_match "agentidd", shell_output("#{bin}/agentidd --help")
    # A service must never be installed for a config that would make it fail at every login.
    output = shell_output("#{bin}/agentidd --config #{testpath}/missing.toml service install 2>&1", 1)
    assert_match "refusing to install", output
  end
end
