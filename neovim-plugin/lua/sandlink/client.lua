-- Starts the sandlink language server per workspace, attaches buffers, and sends requests once it is ready.

local config = require('sandlink.config')
local protocol = require('sandlink.protocol')
local state = require('sandlink.state')

local client_module = {}

-- Neovim 0.11 turned the client into a class whose methods are called with `:`; older versions use `.`.
local client_methods_take_self = vim.fn.has('nvim-0.11') == 1

local function call_client_method(client, method_name, ...)
  if client_methods_take_self then
    return client[method_name](client, ...)
  end
  return client[method_name](...)
end

function client_module.get(workspace)
  if workspace == nil or workspace.client_id == nil then
    return nil
  end
  return vim.lsp.get_client_by_id(workspace.client_id)
end

local function make_capabilities()
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  capabilities.experimental = capabilities.experimental or {}
  capabilities.experimental.sandlink = protocol.client_capability()
  return capabilities
end

-- Only real files inside the workspace are attached: the server syncs them on save.
local function buffer_belongs_to(buffer, root_dir)
  if not vim.api.nvim_buf_is_valid(buffer) or vim.bo[buffer].buftype ~= '' then
    return false
  end
  local name = vim.api.nvim_buf_get_name(buffer)
  if name == '' or name:match('^%a[%w+.-]*://') then
    return false
  end
  name = vim.fn.fnamemodify(name, ':p')
  return name:sub(1, #root_dir + 1) == root_dir .. '/'
end

function client_module.attach_buffer(workspace, buffer)
  if workspace.client_id == nil or not buffer_belongs_to(buffer, workspace.root_dir) then
    return
  end
  if vim.lsp.buf_is_attached(buffer, workspace.client_id) then
    return
  end
  vim.lsp.buf_attach_client(buffer, workspace.client_id)
end

local function run_when_ready_queue(workspace)
  local waiting = workspace.waiting_for_ready
  workspace.waiting_for_ready = {}
  for _, callback in ipairs(waiting) do
    local ok, err = pcall(callback)
    if not ok then
      vim.notify('sandlink: ' .. tostring(err), vim.log.levels.ERROR)
    end
  end
end

-- Starts (or returns the already running) client for root_dir. Works on 0.7 (start_client) and later. lsp_commands
-- are the client-side handlers of the server's `sandlink.*` action commands (commands.lsp_command_handlers).
function client_module.start(root_dir, handlers, lsp_commands)
  local workspace = state.workspace(root_dir)
  if workspace and workspace.client_id and not workspace.stopped then
    return workspace
  end
  workspace = workspace or { root_dir = root_dir, waiting_for_ready = {}, connect_waiters = {} }
  workspace.ready = false
  workspace.stopped = false
  workspace.stopping = false
  workspace.session = nil
  state.workspaces[root_dir] = workspace
  -- Set once the client exists; the exit of an earlier client of this workspace must not stop the new one.
  local this_client_id = nil

  local options = config.options
  local client_config = {
    name = 'sandlink',
    cmd = config.server_command(),
    cmd_env = options.cmd_env,
    cmd_cwd = root_dir,
    root_dir = root_dir,
    workspace_folders = { { uri = vim.uri_from_fname(root_dir), name = vim.fn.fnamemodify(root_dir, ':t') } },
    capabilities = make_capabilities(),
    init_options = options.init_options,
    handlers = handlers,
    commands = lsp_commands,
    on_init = function(client, initialize_result)
      workspace.client_id = client.id
      local experimental = initialize_result and initialize_result.capabilities
        and initialize_result.capabilities.experimental
      if type(experimental) == 'table' and type(experimental.sandlink) == 'table' then
        workspace.server_info = experimental.sandlink
        workspace.drivers = experimental.sandlink.drivers
      end
      -- Neovim 0.7 registers the client (get_client_by_id) only after on_init returns, so requests wait a tick.
      vim.schedule(function()
        workspace.ready = true
        state.announce_change()
        run_when_ready_queue(workspace)
      end)
    end,
    on_exit = function(code, signal)
      -- on_exit may run in a libuv callback; touching buffers or autocmds needs the main loop.
      vim.schedule(function()
        if this_client_id ~= nil and workspace.client_id ~= this_client_id then
          return
        end
        workspace.stopped = true
        workspace.ready = false
        workspace.session = nil
        for _, run in pairs(state.runs) do
          if run.root_dir == root_dir and not run.finished then
            run.finished = true
          end
        end
        state.announce_change()
        -- Requests queued while the server was starting now fail with "not running" instead of waiting forever.
        run_when_ready_queue(workspace)
        -- Exit status 0 is the normal end after a shutdown request (Neovim quitting, :LspStop); anything else is news.
        if not workspace.stopping and (code ~= 0 or (signal ~= 0 and signal ~= nil)) then
          vim.notify(string.format('sandlink: the server exited (code %s, signal %s)', tostring(code), tostring(signal)),
            vim.log.levels.WARN)
        end
      end)
    end,
    on_attach = function(client, buffer)
      if type(options.on_attach) == 'function' then
        options.on_attach(client, buffer)
      end
    end,
  }

  local executable = client_config.cmd[1]
  if vim.fn.executable(executable) ~= 1 then
    workspace.stopped = true
    vim.notify('sandlink: the server `' .. executable .. '` was not found; set `server_path` in setup() or put it on PATH',
      vim.log.levels.ERROR)
    return workspace
  end

  local client_id
  if vim.fn.has('nvim-0.11') == 1 then
    -- start_client is deprecated from 0.11; `attach = false` keeps vim.lsp.start from attaching the current buffer.
    client_id = vim.lsp.start(client_config, { attach = false, reuse_client = function()
      return false
    end })
  else
    client_id = vim.lsp.start_client(client_config)
  end
  if client_id == nil then
    workspace.stopped = true
    vim.notify('sandlink: the server could not be started: ' .. table.concat(client_config.cmd, ' '), vim.log.levels.ERROR)
    return workspace
  end
  workspace.client_id = client_id
  this_client_id = client_id
  for _, buffer in ipairs(vim.api.nvim_list_bufs()) do
    client_module.attach_buffer(workspace, buffer)
  end
  state.announce_change()
  return workspace
end

function client_module.when_ready(workspace, callback)
  if workspace.ready then
    callback()
  else
    table.insert(workspace.waiting_for_ready, callback)
  end
end

-- Turns a JSON-RPC error into one sentence, naming data.kind so that a user can search for it.
function client_module.describe_error(err)
  if type(err) ~= 'table' then
    return tostring(err)
  end
  local message = err.message or vim.inspect(err)
  if type(err.data) == 'table' and type(err.data.kind) == 'string' then
    return message .. ' (' .. err.data.kind .. ')'
  end
  return message
end

-- Sends a request once the server is initialized; on_result(err, result) runs on the main loop.
function client_module.request(workspace, method, params, on_result)
  if workspace == nil then
    on_result({ message = 'sandlink is not set up: call require("sandlink").setup()' }, nil)
    return
  end
  if workspace.stopped then
    on_result({ message = 'the sandlink server is not running: require("sandlink").setup() starts it again, '
      .. ':checkhealth sandlink says why it may fail' }, nil)
    return
  end
  client_module.when_ready(workspace, function()
    local client = client_module.get(workspace)
    if client == nil then
      on_result({ message = 'the sandlink server is not running' }, nil)
      return
    end
    local sent = call_client_method(client, 'request', method, params, function(err, result)
      on_result(err, result)
    end, nil)
    if sent == false then
      on_result({ message = 'the request ' .. method .. ' could not be sent: the server has stopped' }, nil)
    end
  end)
end

function client_module.stop(workspace)
  local client = client_module.get(workspace)
  if client then
    workspace.stopping = true
    call_client_method(client, 'stop')
  end
end

return client_module
