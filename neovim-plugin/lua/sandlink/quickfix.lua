-- Run output into the quickfix list: lines naming PATH:LINE[:COL] inside the workspace, read with plain Lua patterns
-- (no 'errorformat'), so Neovim 0.7 and 0.10 read the same lines the same way.

local quickfix = {}

-- A path inside the workspace root (the server shows paths into the sandbox as workspace paths).
local function is_inside(path, root_dir)
  if root_dir == nil or root_dir == '' then
    return false
  end
  local root = root_dir:gsub('/+$', '')
  return path:sub(1, #root + 1) == root .. '/'
end

-- The error a stack trace belongs to (`Error: expected 3`, `AssertionError [ERR_ASSERTION]: …`), or nil.
local function error_message_of(line)
  local message = line:match('^%s*(%S*Error[%s:%[].*)$') or line:match('^%s*(%S*Exception[%s:%[].*)$')
  if message == nil and (line:match('^%s*%S*Error$') or line:match('^%s*%S*Exception$')) then
    message = vim.trim(line)
  end
  return message
end

-- Quickfix items for output lines: every PATH:LINE[:COL] with an absolute PATH inside root_dir, once per file and
-- line (a column found later fills in one that was missing). A stack frame's text is the error it belongs to.
function quickfix.items(lines, root_dir)
  local items = {}
  local by_location = {}
  local last_error
  for _, line in ipairs(lines) do
    local message = error_message_of(line)
    if message then
      last_error = message
    end
    local search_from = 1
    while true do
      local first, last, path, line_number, column = line:find('(/[^%s:()%[%]\'"`,;]+):(%d+):?(%d*)', search_from)
      if first == nil then
        break
      end
      search_from = last + 1
      -- A path starts a word (`(/w/a.js:1`, `at /w/a.js:1`), not the middle of a URL (`host:8000/w/a.js:1`).
      local starts_word = first == 1 or line:sub(first - 1, first - 1):match('[%s%(%[\'"`=,;]') ~= nil
      if starts_word and is_inside(path, root_dir) then
        local is_frame = line:match('^%s+at%s') ~= nil
        local text = vim.trim(line)
        if is_frame and last_error then
          text = last_error
        end
        local key = path .. ':' .. line_number
        local existing = by_location[key]
        local column_number = tonumber(column) or 0
        if existing == nil then
          local item = { filename = path, lnum = tonumber(line_number), col = column_number, text = text }
          by_location[key] = item
          table.insert(items, item)
        elseif existing.col == 0 and column_number > 0 then
          existing.col = column_number
          if is_frame and last_error then
            existing.text = text
          end
        end
        break
      end
    end
  end
  return items
end

-- The lines of a run's output buffer, or nil when the buffer is gone (older runs' buffers are wiped).
local function output_lines(run)
  local buffer = run.view and run.view.buffer
  if buffer == nil or not vim.api.nvim_buf_is_valid(buffer) then
    return nil
  end
  return vim.api.nvim_buf_get_lines(buffer, 0, -1, false)
end

-- Replaces the quickfix list with the run's locations, titled after the run; returns how many there are (nil when its
-- output is gone).
function quickfix.load(run)
  local lines = output_lines(run)
  if lines == nil then
    return nil
  end
  local items = quickfix.items(lines, run.root_dir)
  vim.fn.setqflist({}, ' ', { title = 'sandlink: ' .. tostring(run.command), items = items })
  return #items
end

return quickfix
