-- Fails when the method and command names of server/src/protocol.rs and neovim-plugin's protocol.lua drift apart.

local harness = require('harness')

local function read_file(path)
  local file = io.open(path, 'r')
  if file == nil then
    return nil
  end
  local content = file:read('*a')
  file:close()
  return content
end

-- Collects "sandlink/x" and "sandlink.x" string literals, in either quote style.
local function sandlink_literals(content)
  local names = {}
  for _, pattern in ipairs({ '"(sandlink[/.][%w_]+)"', "'(sandlink[/.][%w_]+)'" }) do
    for name in content:gmatch(pattern) do
      names[name] = true
    end
  end
  local sorted = vim.tbl_keys(names)
  table.sort(sorted)
  return sorted
end

harness.test('protocol_lua_should_name_the_rust_file_it_mirrors_on_its_first_line', function()
  local lua_mirror = read_file(vim.env.SANDLINK_TEST_REPO .. '/neovim-plugin/lua/sandlink/protocol.lua')
  harness.assert_matches('^%-%-[^\n]*server/src/protocol%.rs', lua_mirror, 'first line of protocol.lua')
end)

harness.test('protocol_lua_should_list_exactly_the_method_names_of_protocol_rs', function()
  local rust_path = vim.env.SANDLINK_TEST_REPO .. '/server/src/protocol.rs'
  local rust_source = read_file(rust_path)
  harness.assert_true(rust_source ~= nil, rust_path .. ' exists')
  local lua_mirror = read_file(vim.env.SANDLINK_TEST_REPO .. '/neovim-plugin/lua/sandlink/protocol.lua')
  local rust_names = sandlink_literals(rust_source)
  local lua_names = sandlink_literals(lua_mirror)
  harness.assert_true(#rust_names > 0, 'protocol.rs has sandlink/* literals')
  local only_in_rust, only_in_lua = {}, {}
  local in_lua = {}
  for _, name in ipairs(lua_names) do
    in_lua[name] = true
  end
  local in_rust = {}
  for _, name in ipairs(rust_names) do
    in_rust[name] = true
    if not in_lua[name] then
      table.insert(only_in_rust, name)
    end
  end
  for _, name in ipairs(lua_names) do
    if not in_rust[name] then
      table.insert(only_in_lua, name)
    end
  end
  harness.assert_equal({ {}, {} }, { only_in_rust, only_in_lua }, '{ only in protocol.rs, only in protocol.lua }')
end)

-- The wire names of a `pub struct NAME` in protocol.rs: camelCase fields, or what `#[serde(rename = "…")]` says.
local function rust_wire_fields(rust_source, struct_name)
  local body = rust_source:match('pub struct ' .. struct_name .. ' {\n(.-)\n}')
  harness.assert_true(body ~= nil, 'protocol.rs declares ' .. struct_name)
  local fields, rename = {}, nil
  for line in (body .. '\n'):gmatch('(.-)\n') do
    local renamed = line:match('#%[serde%(.-rename = "([%w_]+)"')
    if renamed then
      rename = renamed
    end
    local field = line:match('^%s*pub ([%w_]+):')
    if field then
      local camel = field:gsub('_(%w)', function(letter)
        return letter:upper()
      end)
      table.insert(fields, rename or camel)
      rename = nil
    end
  end
  return fields
end

harness.test('protocol_lua_shape_fields_should_match_the_structs_of_protocol_rs', function()
  local rust_source = read_file(vim.env.SANDLINK_TEST_REPO .. '/server/src/protocol.rs')
  package.loaded['sandlink.protocol'] = nil
  local protocol = require('sandlink.protocol')
  for name, lua_fields in pairs(protocol.shape_fields) do
    harness.assert_equal(rust_wire_fields(rust_source, name), lua_fields, name .. ' fields in protocol.rs and protocol.lua')
  end
  harness.assert_true(protocol.shape_fields.DriverInfo ~= nil, 'DriverInfo is mirrored')
end)
