-- :Sandlink terminal (and :Sandlink shell): a terminal buffer bound to a run on a pseudo-terminal in the sandbox.
-- Keys typed in the buffer go to the run (sandlink/input), its output is drawn by Neovim's own terminal emulator
-- (nvim_open_term, Neovim 0.5+), and the window's size follows the run's (sandlink/resize).

local client = require('sandlink.client')
local protocol = require('sandlink.protocol')
local state = require('sandlink.state')

local terminal = {}

-- The terminal opened last, for tests and for :Sandlink terminal's own messages.
terminal.last = nil

local function notify(message, level)
  vim.notify('sandlink: ' .. message, level or vim.log.levels.INFO)
end

-- The size of the first window that shows `buffer`; nil when none does.
local function window_size(buffer)
  local window = vim.fn.win_findbuf(buffer)[1]
  if window == nil then
    return nil
  end
  return { cols = math.max(vim.api.nvim_win_get_width(window), 1), rows = math.max(vim.api.nvim_win_get_height(window), 1) }
end

-- Sends what was typed to the run; keys typed before the server named the run wait for it.
function terminal.send(term, text)
  if term.finished then
    return
  end
  if term.run_id == nil then
    table.insert(term.typed_early, text)
    return
  end
  client.request(term.workspace, protocol.request.input, { runId = term.run_id, text = text }, function(err)
    if err then
      notify('the terminal did not take the input: ' .. client.describe_error(err), vim.log.levels.WARN)
    end
  end)
end

-- Tells the run the window's size, when it changed.
function terminal.follow_size(term)
  if term.run_id == nil or term.finished then
    return
  end
  local size = window_size(term.buffer)
  if size == nil or (term.size and term.size.cols == size.cols and term.size.rows == size.rows) then
    return
  end
  term.size = size
  client.request(term.workspace, protocol.request.resize, { runId = term.run_id, cols = size.cols, rows = size.rows },
    function() end)
end

-- Stops looking at the window's size.
function terminal.stop_watching(term)
  if term.timer then
    term.timer:stop()
    term.timer:close()
    term.timer = nil
  end
end

-- What the run printed, drawn by the terminal emulator.
function terminal.write(term, text)
  if vim.api.nvim_buf_is_valid(term.buffer) then
    vim.api.nvim_chan_send(term.channel, text)
  end
end

-- The run ended: say how, and stop sending keys.
function terminal.finish(term, exit)
  term.finished = true
  terminal.stop_watching(term)
  local how
  if exit.cancelled then
    how = 'cancelled'
  elseif exit.exitCode ~= nil and exit.exitCode ~= vim.NIL then
    how = 'exited with code ' .. tostring(exit.exitCode)
  else
    how = 'ended' .. ((exit.signal and exit.signal ~= vim.NIL) and (' by ' .. tostring(exit.signal)) or '')
  end
  terminal.write(term, '\r\n[sandlink: the terminal ' .. how .. ']\r\n')
  state.announce_change()
end

-- Opens a terminal window on a new run: `command` (a command line), or the sandbox's login shell when it is nil.
function terminal.open(options, on_done)
  options = options or {}
  local workspace = options.workspace or state.current_workspace()
  local function done(err, result)
    if type(on_done) == 'function' then
      on_done(err, result)
    end
  end
  if workspace == nil then
    notify('not set up yet: call require("sandlink").setup() first', vim.log.levels.ERROR)
    return done({ message = 'not set up' })
  end
  if workspace.session == nil then
    -- As :Sandlink run does: connect first with the configured defaults.
    return require('sandlink.commands').connect({ workspace = workspace }, function(err)
      if err then
        return done(err)
      end
      terminal.open(options, on_done)
    end)
  end

  vim.cmd(options.split or 'botright split')
  local buffer = vim.api.nvim_create_buf(true, false)
  vim.api.nvim_win_set_buf(0, buffer)
  local term = {
    workspace = workspace,
    buffer = buffer,
    typed_early = {},
    finished = false,
  }
  term.channel = vim.api.nvim_open_term(buffer, {
    on_input = function(_, _, _, data)
      terminal.send(term, data)
    end,
  })
  pcall(vim.api.nvim_buf_set_name, buffer, 'sandlink://terminal/' .. tostring(buffer))
  terminal.last = term
  local size = window_size(buffer) or { cols = 80, rows = 24 }
  term.size = size

  local group = vim.api.nvim_create_augroup('sandlink_terminal_' .. buffer, { clear = true })
  local resize_events = { 'VimResized', 'WinScrolled', 'BufWinEnter' }
  if vim.fn.exists('##WinResized') == 1 then
    table.insert(resize_events, 'WinResized')
  end
  vim.api.nvim_create_autocmd(resize_events, {
    group = group,
    callback = function()
      terminal.follow_size(term)
    end,
  })
  -- Some size changes fire none of those events (a :resize from a script, and 0.7 has no WinResized), so the size is
  -- also looked at now and then while the run lives; a look is two window calls.
  local timer = (vim.uv or vim.loop).new_timer()
  term.timer = timer
  timer:start(300, 300, vim.schedule_wrap(function()
    if term.finished or not vim.api.nvim_buf_is_valid(buffer) then
      terminal.stop_watching(term)
      return
    end
    terminal.follow_size(term)
  end))
  vim.api.nvim_create_autocmd({ 'BufWipeout', 'BufDelete' }, {
    group = group,
    buffer = buffer,
    callback = function()
      -- Closing the buffer ends the run, as closing a terminal ends its shell.
      if term.run_id and not term.finished then
        client.request(workspace, protocol.request.cancel, { runId = term.run_id }, function() end)
      end
      pcall(vim.api.nvim_del_augroup_by_id, group)
      terminal.stop_watching(term)
    end,
  })

  local params = { sessionId = workspace.session.sessionId, pty = size }
  if options.command and vim.trim(options.command) ~= '' then
    params.command = vim.trim(options.command)
  end
  local shown = params.command or 'terminal'
  state.run_requests_in_flight = state.run_requests_in_flight + 1
  client.request(workspace, protocol.request.run, params, function(err, result)
    state.run_requests_in_flight = state.run_requests_in_flight - 1
    if err or type(result) ~= 'table' or result.runId == nil then
      terminal.write(term, '[sandlink: the terminal did not start: ' .. client.describe_error(err or {}) .. ']\r\n')
      term.finished = true
      return done(err or { message = 'no runId in the response' })
    end
    term.run_id = result.runId
    state.runs[result.runId] = {
      run_id = result.runId,
      root_dir = workspace.root_dir,
      command = shown,
      terminal = term,
      finished = false,
      started_order = state.next_run_order(),
    }
    vim.b[buffer].sandlink_run_id = result.runId
    state.announce_change()
    require('sandlink.handlers').replay_held_messages(result.runId, workspace)
    for _, text in ipairs(term.typed_early) do
      terminal.send(term, text)
    end
    term.typed_early = {}
    -- The window may have changed size while the run started.
    terminal.follow_size(term)
    done(nil, term)
  end)
  if options.insert ~= false then
    vim.cmd('startinsert')
  end
  return term
end

return terminal
