-- Scratch buffers that show a run's output as it streams in: stdout and stderr told apart, an exit line at the end.

local config = require('sandlink.config')

local output = {}

output.namespace = vim.api.nvim_create_namespace('sandlink_output')

local view_count = 0
-- Views in creation order, for wiping the oldest when there are more than output.keep_buffers.
local views_in_order = {}

-- `highlight default` leaves colour schemes and users free to restyle; nvim_set_hl's `default` is missing on 0.7.
local function define_highlights()
  vim.cmd('highlight default link SandlinkStderr ErrorMsg')
  vim.cmd('highlight default link SandlinkCommand Title')
  vim.cmd('highlight default link SandlinkExitSuccess MoreMsg')
  vim.cmd('highlight default link SandlinkExitFailure WarningMsg')
end

-- Splits on "\n" keeping empty pieces ("a\n" gives {"a", ""}); vim.split's signature changed across versions.
function output.split_lines(text)
  text = text:gsub('\r\n', '\n')
  local pieces = {}
  local start_index = 1
  while true do
    local newline_index = text:find('\n', start_index, true)
    if newline_index == nil then
      table.insert(pieces, text:sub(start_index))
      return pieces
    end
    table.insert(pieces, text:sub(start_index, newline_index - 1))
    start_index = newline_index + 1
  end
end

local function with_modifiable(buffer, change)
  vim.bo[buffer].modifiable = true
  local ok, err = pcall(change)
  vim.bo[buffer].modifiable = false
  if not ok then
    error(err)
  end
end

-- Windows that show the buffer with the cursor on its last line follow new output; others are left alone.
local function windows_following(buffer)
  local following = {}
  local line_count = vim.api.nvim_buf_line_count(buffer)
  for _, window in ipairs(vim.fn.win_findbuf(buffer)) do
    if vim.api.nvim_win_get_cursor(window)[1] >= line_count then
      table.insert(following, window)
    end
  end
  return following
end

local function scroll_to_end(windows, buffer)
  local line_count = vim.api.nvim_buf_line_count(buffer)
  for _, window in ipairs(windows) do
    if vim.api.nvim_win_is_valid(window) then
      pcall(vim.api.nvim_win_set_cursor, window, { line_count, 0 })
    end
  end
end

-- Wipes the oldest finished run buffers that no window shows, so that a long session does not pile them up.
local function wipe_old_views()
  local keep = tonumber((config.options.output or {}).keep_buffers) or 20
  local index = 1
  while #views_in_order > keep and index <= #views_in_order do
    local view = views_in_order[index]
    local buffer_gone = not vim.api.nvim_buf_is_valid(view.buffer)
    if buffer_gone or (view.finished and #vim.fn.win_findbuf(view.buffer) == 0) then
      if not buffer_gone then
        pcall(vim.api.nvim_buf_delete, view.buffer, { force = true })
      end
      table.remove(views_in_order, index)
    else
      index = index + 1
    end
  end
end

function output.create(command, root_dir)
  define_highlights()
  wipe_old_views()
  view_count = view_count + 1
  local buffer = vim.api.nvim_create_buf(false, true)
  pcall(vim.api.nvim_buf_set_name, buffer, 'sandlink://run/' .. view_count)
  vim.bo[buffer].buftype = 'nofile'
  vim.bo[buffer].bufhidden = 'hide'
  vim.bo[buffer].swapfile = false
  vim.bo[buffer].filetype = 'sandlink-output'
  local view = {
    buffer = buffer,
    command = command,
    root_dir = root_dir,
    -- The 0-based line that has no newline yet and the stream it came from; later text of that stream continues it.
    open_line = nil,
    open_stream = nil,
  }
  with_modifiable(buffer, function()
    vim.api.nvim_buf_set_lines(buffer, 0, -1, false, { '$ ' .. command })
  end)
  vim.api.nvim_buf_add_highlight(buffer, output.namespace, 'SandlinkCommand', 0, 0, -1)
  vim.b[buffer].sandlink_output = true
  output.last_view = view
  table.insert(views_in_order, view)
  return view
end

-- Shows the view in the window already used for sandlink output, else in a new one as configured.
function output.show(view)
  local options = config.options.output or {}
  local open_mode = options.open
  if open_mode == false or open_mode == nil then
    return nil
  end
  for _, window in ipairs(vim.api.nvim_list_wins()) do
    local ok, is_output_window = pcall(vim.api.nvim_win_get_var, window, 'sandlink_output_window')
    if ok and is_output_window then
      vim.api.nvim_win_set_buf(window, view.buffer)
      scroll_to_end({ window }, view.buffer)
      return window
    end
  end
  local previous_window = vim.api.nvim_get_current_win()
  local size = tonumber(options.size) or 12
  if open_mode == 'vsplit' then
    vim.cmd('botright ' .. size .. 'vsplit')
  elseif open_mode == 'tab' then
    vim.cmd('tabnew')
  elseif open_mode == 'current' then
    -- Nothing to open: the current window shows the output.
  else
    vim.cmd('botright ' .. size .. 'split')
  end
  local window = vim.api.nvim_get_current_win()
  vim.api.nvim_win_set_buf(window, view.buffer)
  vim.api.nvim_win_set_var(window, 'sandlink_output_window', true)
  scroll_to_end({ window }, view.buffer)
  if options.keep_focus and open_mode ~= 'current' and open_mode ~= 'tab' and vim.api.nvim_win_is_valid(previous_window) then
    vim.api.nvim_set_current_win(previous_window)
  end
  return window
end

function output.append(view, stream, text)
  local buffer = view.buffer
  if not vim.api.nvim_buf_is_valid(buffer) or text == nil or text == '' then
    return
  end
  local pieces = output.split_lines(text)
  local following = windows_following(buffer)
  local new_lines_start
  with_modifiable(buffer, function()
    if view.open_line ~= nil and view.open_stream == stream then
      local open_text = vim.api.nvim_buf_get_lines(buffer, view.open_line, view.open_line + 1, false)[1] or ''
      vim.api.nvim_buf_set_lines(buffer, view.open_line, view.open_line + 1, false, { open_text .. pieces[1] })
      table.remove(pieces, 1)
      if #pieces == 0 then
        return
      end
    end
    -- A trailing empty piece means the text ended with a newline: every line is complete.
    local ends_open = pieces[#pieces] ~= ''
    if not ends_open then
      table.remove(pieces)
    end
    if #pieces == 0 then
      view.open_line, view.open_stream = nil, nil
      return
    end
    new_lines_start = vim.api.nvim_buf_line_count(buffer)
    vim.api.nvim_buf_set_lines(buffer, -1, -1, false, pieces)
    if ends_open then
      view.open_line, view.open_stream = new_lines_start + #pieces - 1, stream
    else
      view.open_line, view.open_stream = nil, nil
    end
  end)
  if stream == 'stderr' and new_lines_start ~= nil then
    local line_count = vim.api.nvim_buf_line_count(buffer)
    for line = new_lines_start, line_count - 1 do
      vim.api.nvim_buf_add_highlight(buffer, output.namespace, 'SandlinkStderr', line, 0, -1)
    end
  end
  scroll_to_end(following, buffer)
end

-- Appends a whole line of the plugin's own (errors, notes), never continuing an open output line.
function output.append_note(view, text, highlight_group)
  local buffer = view.buffer
  if not vim.api.nvim_buf_is_valid(buffer) then
    return
  end
  local following = windows_following(buffer)
  local line
  with_modifiable(buffer, function()
    line = vim.api.nvim_buf_line_count(buffer)
    vim.api.nvim_buf_set_lines(buffer, -1, -1, false, { text })
  end)
  view.open_line, view.open_stream = nil, nil
  if highlight_group then
    vim.api.nvim_buf_add_highlight(buffer, output.namespace, highlight_group, line, 0, -1)
  end
  scroll_to_end(following, buffer)
end

local function format_duration(duration_ms)
  if type(duration_ms) ~= 'number' then
    return nil
  end
  if duration_ms < 1000 then
    return string.format('%d ms', duration_ms)
  end
  return string.format('%.1f s', duration_ms / 1000)
end

-- The exit line always starts with "[exit" so that it can be searched for, and says how the run ended.
function output.exit_line(exit)
  local outcome
  if exit.cancelled then
    outcome = 'exit: cancelled'
  elseif exit.timedOut then
    outcome = 'exit: timed out'
  elseif type(exit.exitCode) == 'number' then
    outcome = 'exit ' .. exit.exitCode
  elseif exit.signal and exit.signal ~= vim.NIL then
    outcome = 'exit: killed by ' .. tostring(exit.signal)
  else
    outcome = 'exit: unknown status'
  end
  local duration = format_duration(exit.durationMs)
  local line = '[' .. outcome .. (duration and (' after ' .. duration) or '') .. ']'
  if type(exit.logPath) == 'string' and exit.logPath ~= '' then
    line = line .. ' full log: ' .. exit.logPath
  end
  return line
end

function output.finish(view, exit)
  view.finished = true
  local succeeded = exit.exitCode == 0 and not exit.cancelled and not exit.timedOut
  output.append_note(view, output.exit_line(exit), succeeded and 'SandlinkExitSuccess' or 'SandlinkExitFailure')
end

return output
