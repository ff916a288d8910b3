-- The public face of the plugin: setup(), the :Sandlink command, statusline(), and functions for scripts and keymaps.

local sandlink = {}

local augroup_name = 'sandlink'

-- Attaches file buffers opened later to the workspace they live in, so that saving them syncs them, and asks for the
-- tasks again when a workspace's .sandlink.toml is written.
local function create_autocmds()
  local group = vim.api.nvim_create_augroup(augroup_name, { clear = true })
  vim.api.nvim_create_autocmd('BufWritePost', {
    group = group,
    pattern = '.sandlink.toml',
    callback = function(event)
      local written = vim.fn.fnamemodify(vim.api.nvim_buf_get_name(event.buf), ':p')
      for root_dir, workspace in pairs(require('sandlink.state').workspaces) do
        if written == vim.fn.fnamemodify(root_dir .. '/.sandlink.toml', ':p') and not workspace.stopped then
          require('sandlink.commands').refresh_tasks(workspace)
        end
      end
    end,
  })
  vim.api.nvim_create_autocmd({ 'BufReadPost', 'BufNewFile', 'BufFilePost' }, {
    group = group,
    callback = function(event)
      local state = require('sandlink.state')
      local client = require('sandlink.client')
      for _, workspace in pairs(state.workspaces) do
        client.attach_buffer(workspace, event.buf)
      end
    end,
  })
end

local function create_user_command()
  vim.api.nvim_create_user_command('Sandlink', function(command)
    require('sandlink.commands').dispatch(command.args)
  end, {
    nargs = '*',
    desc = 'sandlink: connect, run, cancel, sync, conflicts, resolve, preview, status, extend, disconnect, profiles',
    complete = function(argument_lead, command_line, cursor_position)
      return require('sandlink.commands').complete(argument_lead, command_line, cursor_position)
    end,
  })
end

-- Starts (or attaches to) the server for the workspace of the current buffer and defines :Sandlink.
function sandlink.setup(user_options)
  local config = require('sandlink.config')
  config.apply(user_options)
  create_user_command()
  create_autocmds()
  sandlink.setup_called = true
  local buffer_path = vim.api.nvim_buf_get_name(0)
  local start_directory = nil
  if buffer_path ~= '' and not buffer_path:match('^%a[%w+.-]*://') then
    start_directory = vim.fn.fnamemodify(buffer_path, ':p:h')
  end
  local root_dir = config.find_root(start_directory)
  local handlers = require('sandlink.handlers').for_client_config()
  local lsp_commands = require('sandlink.commands').lsp_command_handlers()
  local workspace = require('sandlink.client').start(root_dir, handlers, lsp_commands)
  if not workspace.stopped then
    require('sandlink.client').when_ready(workspace, function()
      local commands = require('sandlink.commands')
      commands.refresh_catalog(workspace)
      if config.options.auto_connect then
        commands.connect({})
      end
    end)
  end
  return workspace
end

-- The status line text of the current workspace, e.g. "sandlink: local active, 1 running"; '' before setup().
function sandlink.statusline()
  return require('sandlink.state').statusline()
end

-- The same actions as the :Sandlink subcommands, each with an optional on_done(err, result) for scripts.
function sandlink.connect(options, on_done)
  return require('sandlink.commands').connect(options, on_done)
end

function sandlink.disconnect(options, on_done)
  return require('sandlink.commands').disconnect(options, on_done)
end

function sandlink.run(command_line, options, on_done)
  return require('sandlink.commands').run(command_line, options, on_done)
end

function sandlink.cancel(run_id, on_done)
  return require('sandlink.commands').cancel(run_id, on_done)
end

function sandlink.sync(direction, on_done)
  return require('sandlink.commands').sync(direction, on_done)
end

function sandlink.preview(port, on_done)
  return require('sandlink.commands').preview(port, on_done)
end

function sandlink.status(on_done)
  return require('sandlink.commands').status(on_done)
end

function sandlink.extend(seconds, on_done)
  return require('sandlink.commands').extend(seconds, on_done)
end

-- The session of the current workspace (a SessionInfo table) or nil when not connected.
function sandlink.session()
  local workspace = require('sandlink.state').current_workspace()
  return workspace and workspace.session or nil
end

return sandlink
