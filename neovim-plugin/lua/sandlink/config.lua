-- The plugin's options: defaults, merging of the user's setup() table, and where the server binary comes from.

local config = {}

config.defaults = {
  -- The server command; nil means: $SANDLINK_SERVER, else `server_path`, else `sandlink` on PATH, plus `lsp`.
  cmd = nil,
  server_path = nil,
  -- Extra environment for the server process (SANDLINK_STATE_DIR, RUST_LOG, ...).
  cmd_env = nil,
  -- The workspace root; nil means the nearest .sandlink.toml, else the nearest .git, else the current directory.
  root_dir = nil,
  -- Passed as initializationOptions to the server, untouched.
  init_options = nil,
  -- What `:Sandlink connect` without arguments asks for: a profile name and/or a driver id; nil lets the server pick.
  profile = nil,
  driver = nil,
  -- Driver settings passed with connect (image, host, ...).
  settings = nil,
  -- Upload the workspace as part of connecting (protocol default).
  sync_on_connect = true,
  -- Connect as soon as the server is up.
  auto_connect = false,
  -- Default seconds for `:Sandlink extend` without an argument.
  extend_seconds = 1800,
  -- Default timeout for runs in milliseconds; nil leaves it to the server.
  run_timeout_ms = nil,
  output = {
    -- How a run's output buffer is shown: 'split', 'vsplit', 'tab', 'current' or false (not shown).
    open = 'split',
    -- Height of the split (or width of the vsplit) in lines/columns.
    size = 12,
    -- Move the cursor back to the window it came from after opening the output.
    keep_focus = true,
    -- How many run buffers to keep; older finished ones that no window shows are wiped.
    keep_buffers = 20,
  },
  preview = {
    -- Open previews when the server announces them with sandlink/previewReady, not only on :Sandlink preview.
    open_when_ready = false,
  },
  -- Called with (client, bufnr) when the client attaches to a buffer.
  on_attach = nil,
}

config.options = vim.deepcopy(config.defaults)

function config.apply(user_options)
  config.options = vim.tbl_deep_extend('force', vim.deepcopy(config.defaults), user_options or {})
  return config.options
end

-- Finds the server command the way rust-analyzer's bootstrap does: explicit setting, environment override, PATH.
function config.server_command()
  local options = config.options
  if options.cmd then
    return options.cmd
  end
  local server_path = options.server_path
  if server_path == nil or server_path == '' then
    server_path = vim.env.SANDLINK_SERVER
  end
  if server_path == nil or server_path == '' then
    server_path = 'sandlink'
  end
  return { server_path, 'lsp' }
end

-- The workspace root for a directory, found without vim.fs so that Neovim 0.7 works too.
function config.find_root(start_directory)
  if config.options.root_dir then
    return (vim.fn.fnamemodify(config.options.root_dir, ':p'):gsub('(.)/$', '%1'))
  end
  start_directory = start_directory or vim.fn.getcwd()
  local marker_file = vim.fn.findfile('.sandlink.toml', start_directory .. ';')
  if marker_file ~= '' then
    return vim.fn.fnamemodify(marker_file, ':p:h')
  end
  local git_directory = vim.fn.finddir('.git', start_directory .. ';')
  if git_directory ~= '' then
    return vim.fn.fnamemodify(git_directory, ':p:h:h')
  end
  return (vim.fn.fnamemodify(start_directory, ':p'):gsub('(.)/$', '%1'))
end

return config
