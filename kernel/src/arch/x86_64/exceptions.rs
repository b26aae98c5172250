//! Exceptions and interrupts: the IDT, entry stubs that save a [`TrapFrame`],
//! and the handler (interrupts go on to [`super::interrupts::dispatch`]).
//!
//! The `x86-interrupt` calling convention is unstable, so the stubs are plain
//! assembly: each pushes a dummy error code where the CPU does not (Intel SDM
//! Vol. 3A §6.13, Table 6-1) and its vector number, then a common path saves the
//! general registers and calls [`x86_exception_handler`] with the frame.
//!
//! A device can send any vector from 16 up as a message (a DMA write to
//! 0xFEEx_xxxx that no interrupt remapping stopped): the handler tells those
//! from exceptions and system calls by the local APIC's in-service bit,
//! acknowledges and drops them, and counts them ([`stray_interrupts`]).
//! Vectors 17, 21, 29 and 30 are exceptions with an error code, but only
//! where alignment checking (CR0.AM), CET or SEV-ES is on, none of which this
//! kernel turns on: their stubs push a dummy code like an interrupt's, so a
//! device that sends them leaves a well-formed frame.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::structures::idt::{Entry, HandlerFunc, InterruptDescriptorTable};

/// Vectors below this are exceptions; the rest are interrupts (SDM Vol. 3A §6.2).
pub const FIRST_INTERRUPT_VECTOR: usize = 32;
const VECTORS: usize = 256;
const VECTOR_NMI: u64 = 2;
const VECTOR_BREAKPOINT: u64 = 3;
const VECTOR_INVALID_OPCODE: u64 = 6;
const VECTOR_PAGE_FAULT: u64 = 14;
/// Length of `ud2`, skipped when a test provokes #UD on purpose.
const UD2_LEN: u64 = 2;

/// The state the stubs save, lowest address first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU (SDM Vol. 3A §6.14.1, 64-bit mode stack frame).
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}
const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

global_asm!(
    r#"
    .section .text.isr, "ax"
    .code64
isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call x86_exception_handler
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
isr_0:
    push 0
    push 0
    jmp isr_common
isr_1:
    push 0
    push 1
    jmp isr_common
isr_2:
    push 0
    push 2
    jmp isr_common
isr_3:
    push 0
    push 3
    jmp isr_common
isr_4:
    push 0
    push 4
    jmp isr_common
isr_5:
    push 0
    push 5
    jmp isr_common
isr_6:
    push 0
    push 6
    jmp isr_common
isr_7:
    push 0
    push 7
    jmp isr_common
isr_8:
    push 8
    jmp isr_common
isr_9:
    push 0
    push 9
    jmp isr_common
isr_10:
    push 10
    jmp isr_common
isr_11:
    push 11
    jmp isr_common
isr_12:
    push 12
    jmp isr_common
isr_13:
    push 13
    jmp isr_common
isr_14:
    push 14
    jmp isr_common
isr_15:
    push 0
    push 15
    jmp isr_common
isr_16:
    push 0
    push 16
    jmp isr_common
isr_17:
    push 0
    push 17
    jmp isr_common
isr_18:
    push 0
    push 18
    jmp isr_common
isr_19:
    push 0
    push 19
    jmp isr_common
isr_20:
    push 0
    push 20
    jmp isr_common
isr_21:
    push 0
    push 21
    jmp isr_common
isr_22:
    push 0
    push 22
    jmp isr_common
isr_23:
    push 0
    push 23
    jmp isr_common
isr_24:
    push 0
    push 24
    jmp isr_common
isr_25:
    push 0
    push 25
    jmp isr_common
isr_26:
    push 0
    push 26
    jmp isr_common
isr_27:
    push 0
    push 27
    jmp isr_common
isr_28:
    push 0
    push 28
    jmp isr_common
isr_29:
    push 0
    push 29
    jmp isr_common
isr_30:
    push 0
    push 30
    jmp isr_common
isr_31:
    push 0
    push 31
    jmp isr_common
isr_32:
    push 0
    push 32
    jmp isr_common
isr_33:
    push 0
    push 33
    jmp isr_common
isr_34:
    push 0
    push 34
    jmp isr_common
isr_35:
    push 0
    push 35
    jmp isr_common
isr_36:
    push 0
    push 36
    jmp isr_common
isr_37:
    push 0
    push 37
    jmp isr_common
isr_38:
    push 0
    push 38
    jmp isr_common
isr_39:
    push 0
    push 39
    jmp isr_common
isr_40:
    push 0
    push 40
    jmp isr_common
isr_41:
    push 0
    push 41
    jmp isr_common
isr_42:
    push 0
    push 42
    jmp isr_common
isr_43:
    push 0
    push 43
    jmp isr_common
isr_44:
    push 0
    push 44
    jmp isr_common
isr_45:
    push 0
    push 45
    jmp isr_common
isr_46:
    push 0
    push 46
    jmp isr_common
isr_47:
    push 0
    push 47
    jmp isr_common
isr_48:
    push 0
    push 48
    jmp isr_common
isr_49:
    push 0
    push 49
    jmp isr_common
isr_50:
    push 0
    push 50
    jmp isr_common
isr_51:
    push 0
    push 51
    jmp isr_common
isr_52:
    push 0
    push 52
    jmp isr_common
isr_53:
    push 0
    push 53
    jmp isr_common
isr_54:
    push 0
    push 54
    jmp isr_common
isr_55:
    push 0
    push 55
    jmp isr_common
isr_56:
    push 0
    push 56
    jmp isr_common
isr_57:
    push 0
    push 57
    jmp isr_common
isr_58:
    push 0
    push 58
    jmp isr_common
isr_59:
    push 0
    push 59
    jmp isr_common
isr_60:
    push 0
    push 60
    jmp isr_common
isr_61:
    push 0
    push 61
    jmp isr_common
isr_62:
    push 0
    push 62
    jmp isr_common
isr_63:
    push 0
    push 63
    jmp isr_common
isr_64:
    push 0
    push 64
    jmp isr_common
isr_65:
    push 0
    push 65
    jmp isr_common
isr_66:
    push 0
    push 66
    jmp isr_common
isr_67:
    push 0
    push 67
    jmp isr_common
isr_68:
    push 0
    push 68
    jmp isr_common
isr_69:
    push 0
    push 69
    jmp isr_common
isr_70:
    push 0
    push 70
    jmp isr_common
isr_71:
    push 0
    push 71
    jmp isr_common
isr_72:
    push 0
    push 72
    jmp isr_common
isr_73:
    push 0
    push 73
    jmp isr_common
isr_74:
    push 0
    push 74
    jmp isr_common
isr_75:
    push 0
    push 75
    jmp isr_common
isr_76:
    push 0
    push 76
    jmp isr_common
isr_77:
    push 0
    push 77
    jmp isr_common
isr_78:
    push 0
    push 78
    jmp isr_common
isr_79:
    push 0
    push 79
    jmp isr_common
isr_80:
    push 0
    push 80
    jmp isr_common
isr_81:
    push 0
    push 81
    jmp isr_common
isr_82:
    push 0
    push 82
    jmp isr_common
isr_83:
    push 0
    push 83
    jmp isr_common
isr_84:
    push 0
    push 84
    jmp isr_common
isr_85:
    push 0
    push 85
    jmp isr_common
isr_86:
    push 0
    push 86
    jmp isr_common
isr_87:
    push 0
    push 87
    jmp isr_common
isr_88:
    push 0
    push 88
    jmp isr_common
isr_89:
    push 0
    push 89
    jmp isr_common
isr_90:
    push 0
    push 90
    jmp isr_common
isr_91:
    push 0
    push 91
    jmp isr_common
isr_92:
    push 0
    push 92
    jmp isr_common
isr_93:
    push 0
    push 93
    jmp isr_common
isr_94:
    push 0
    push 94
    jmp isr_common
isr_95:
    push 0
    push 95
    jmp isr_common
isr_96:
    push 0
    push 96
    jmp isr_common
isr_97:
    push 0
    push 97
    jmp isr_common
isr_98:
    push 0
    push 98
    jmp isr_common
isr_99:
    push 0
    push 99
    jmp isr_common
isr_100:
    push 0
    push 100
    jmp isr_common
isr_101:
    push 0
    push 101
    jmp isr_common
isr_102:
    push 0
    push 102
    jmp isr_common
isr_103:
    push 0
    push 103
    jmp isr_common
isr_104:
    push 0
    push 104
    jmp isr_common
isr_105:
    push 0
    push 105
    jmp isr_common
isr_106:
    push 0
    push 106
    jmp isr_common
isr_107:
    push 0
    push 107
    jmp isr_common
isr_108:
    push 0
    push 108
    jmp isr_common
isr_109:
    push 0
    push 109
    jmp isr_common
isr_110:
    push 0
    push 110
    jmp isr_common
isr_111:
    push 0
    push 111
    jmp isr_common
isr_112:
    push 0
    push 112
    jmp isr_common
isr_113:
    push 0
    push 113
    jmp isr_common
isr_114:
    push 0
    push 114
    jmp isr_common
isr_115:
    push 0
    push 115
    jmp isr_common
isr_116:
    push 0
    push 116
    jmp isr_common
isr_117:
    push 0
    push 117
    jmp isr_common
isr_118:
    push 0
    push 118
    jmp isr_common
isr_119:
    push 0
    push 119
    jmp isr_common
isr_120:
    push 0
    push 120
    jmp isr_common
isr_121:
    push 0
    push 121
    jmp isr_common
isr_122:
    push 0
    push 122
    jmp isr_common
isr_123:
    push 0
    push 123
    jmp isr_common
isr_124:
    push 0
    push 124
    jmp isr_common
isr_125:
    push 0
    push 125
    jmp isr_common
isr_126:
    push 0
    push 126
    jmp isr_common
isr_127:
    push 0
    push 127
    jmp isr_common
isr_128:
    push 0
    push 128
    jmp isr_common
isr_129:
    push 0
    push 129
    jmp isr_common
isr_130:
    push 0
    push 130
    jmp isr_common
isr_131:
    push 0
    push 131
    jmp isr_common
isr_132:
    push 0
    push 132
    jmp isr_common
isr_133:
    push 0
    push 133
    jmp isr_common
isr_134:
    push 0
    push 134
    jmp isr_common
isr_135:
    push 0
    push 135
    jmp isr_common
isr_136:
    push 0
    push 136
    jmp isr_common
isr_137:
    push 0
    push 137
    jmp isr_common
isr_138:
    push 0
    push 138
    jmp isr_common
isr_139:
    push 0
    push 139
    jmp isr_common
isr_140:
    push 0
    push 140
    jmp isr_common
isr_141:
    push 0
    push 141
    jmp isr_common
isr_142:
    push 0
    push 142
    jmp isr_common
isr_143:
    push 0
    push 143
    jmp isr_common
isr_144:
    push 0
    push 144
    jmp isr_common
isr_145:
    push 0
    push 145
    jmp isr_common
isr_146:
    push 0
    push 146
    jmp isr_common
isr_147:
    push 0
    push 147
    jmp isr_common
isr_148:
    push 0
    push 148
    jmp isr_common
isr_149:
    push 0
    push 149
    jmp isr_common
isr_150:
    push 0
    push 150
    jmp isr_common
isr_151:
    push 0
    push 151
    jmp isr_common
isr_152:
    push 0
    push 152
    jmp isr_common
isr_153:
    push 0
    push 153
    jmp isr_common
isr_154:
    push 0
    push 154
    jmp isr_common
isr_155:
    push 0
    push 155
    jmp isr_common
isr_156:
    push 0
    push 156
    jmp isr_common
isr_157:
    push 0
    push 157
    jmp isr_common
isr_158:
    push 0
    push 158
    jmp isr_common
isr_159:
    push 0
    push 159
    jmp isr_common
isr_160:
    push 0
    push 160
    jmp isr_common
isr_161:
    push 0
    push 161
    jmp isr_common
isr_162:
    push 0
    push 162
    jmp isr_common
isr_163:
    push 0
    push 163
    jmp isr_common
isr_164:
    push 0
    push 164
    jmp isr_common
isr_165:
    push 0
    push 165
    jmp isr_common
isr_166:
    push 0
    push 166
    jmp isr_common
isr_167:
    push 0
    push 167
    jmp isr_common
isr_168:
    push 0
    push 168
    jmp isr_common
isr_169:
    push 0
    push 169
    jmp isr_common
isr_170:
    push 0
    push 170
    jmp isr_common
isr_171:
    push 0
    push 171
    jmp isr_common
isr_172:
    push 0
    push 172
    jmp isr_common
isr_173:
    push 0
    push 173
    jmp isr_common
isr_174:
    push 0
    push 174
    jmp isr_common
isr_175:
    push 0
    push 175
    jmp isr_common
isr_176:
    push 0
    push 176
    jmp isr_common
isr_177:
    push 0
    push 177
    jmp isr_common
isr_178:
    push 0
    push 178
    jmp isr_common
isr_179:
    push 0
    push 179
    jmp isr_common
isr_180:
    push 0
    push 180
    jmp isr_common
isr_181:
    push 0
    push 181
    jmp isr_common
isr_182:
    push 0
    push 182
    jmp isr_common
isr_183:
    push 0
    push 183
    jmp isr_common
isr_184:
    push 0
    push 184
    jmp isr_common
isr_185:
    push 0
    push 185
    jmp isr_common
isr_186:
    push 0
    push 186
    jmp isr_common
isr_187:
    push 0
    push 187
    jmp isr_common
isr_188:
    push 0
    push 188
    jmp isr_common
isr_189:
    push 0
    push 189
    jmp isr_common
isr_190:
    push 0
    push 190
    jmp isr_common
isr_191:
    push 0
    push 191
    jmp isr_common
isr_192:
    push 0
    push 192
    jmp isr_common
isr_193:
    push 0
    push 193
    jmp isr_common
isr_194:
    push 0
    push 194
    jmp isr_common
isr_195:
    push 0
    push 195
    jmp isr_common
isr_196:
    push 0
    push 196
    jmp isr_common
isr_197:
    push 0
    push 197
    jmp isr_common
isr_198:
    push 0
    push 198
    jmp isr_common
isr_199:
    push 0
    push 199
    jmp isr_common
isr_200:
    push 0
    push 200
    jmp isr_common
isr_201:
    push 0
    push 201
    jmp isr_common
isr_202:
    push 0
    push 202
    jmp isr_common
isr_203:
    push 0
    push 203
    jmp isr_common
isr_204:
    push 0
    push 204
    jmp isr_common
isr_205:
    push 0
    push 205
    jmp isr_common
isr_206:
    push 0
    push 206
    jmp isr_common
isr_207:
    push 0
    push 207
    jmp isr_common
isr_208:
    push 0
    push 208
    jmp isr_common
isr_209:
    push 0
    push 209
    jmp isr_common
isr_210:
    push 0
    push 210
    jmp isr_common
isr_211:
    push 0
    push 211
    jmp isr_common
isr_212:
    push 0
    push 212
    jmp isr_common
isr_213:
    push 0
    push 213
    jmp isr_common
isr_214:
    push 0
    push 214
    jmp isr_common
isr_215:
    push 0
    push 215
    jmp isr_common
isr_216:
    push 0
    push 216
    jmp isr_common
isr_217:
    push 0
    push 217
    jmp isr_common
isr_218:
    push 0
    push 218
    jmp isr_common
isr_219:
    push 0
    push 219
    jmp isr_common
isr_220:
    push 0
    push 220
    jmp isr_common
isr_221:
    push 0
    push 221
    jmp isr_common
isr_222:
    push 0
    push 222
    jmp isr_common
isr_223:
    push 0
    push 223
    jmp isr_common
isr_224:
    push 0
    push 224
    jmp isr_common
isr_225:
    push 0
    push 225
    jmp isr_common
isr_226:
    push 0
    push 226
    jmp isr_common
isr_227:
    push 0
    push 227
    jmp isr_common
isr_228:
    push 0
    push 228
    jmp isr_common
isr_229:
    push 0
    push 229
    jmp isr_common
isr_230:
    push 0
    push 230
    jmp isr_common
isr_231:
    push 0
    push 231
    jmp isr_common
isr_232:
    push 0
    push 232
    jmp isr_common
isr_233:
    push 0
    push 233
    jmp isr_common
isr_234:
    push 0
    push 234
    jmp isr_common
isr_235:
    push 0
    push 235
    jmp isr_common
isr_236:
    push 0
    push 236
    jmp isr_common
isr_237:
    push 0
    push 237
    jmp isr_common
isr_238:
    push 0
    push 238
    jmp isr_common
isr_239:
    push 0
    push 239
    jmp isr_common
isr_240:
    push 0
    push 240
    jmp isr_common
isr_241:
    push 0
    push 241
    jmp isr_common
isr_242:
    push 0
    push 242
    jmp isr_common
isr_243:
    push 0
    push 243
    jmp isr_common
isr_244:
    push 0
    push 244
    jmp isr_common
isr_245:
    push 0
    push 245
    jmp isr_common
isr_246:
    push 0
    push 246
    jmp isr_common
isr_247:
    push 0
    push 247
    jmp isr_common
isr_248:
    push 0
    push 248
    jmp isr_common
isr_249:
    push 0
    push 249
    jmp isr_common
isr_250:
    push 0
    push 250
    jmp isr_common
isr_251:
    push 0
    push 251
    jmp isr_common
isr_252:
    push 0
    push 252
    jmp isr_common
isr_253:
    push 0
    push 253
    jmp isr_common
isr_254:
    push 0
    push 254
    jmp isr_common
isr_255:
    push 0
    push 255
    jmp isr_common
    .section .rodata.isr, "a"
    .balign 8
    .global isr_table
isr_table:
    .quad isr_0
    .quad isr_1
    .quad isr_2
    .quad isr_3
    .quad isr_4
    .quad isr_5
    .quad isr_6
    .quad isr_7
    .quad isr_8
    .quad isr_9
    .quad isr_10
    .quad isr_11
    .quad isr_12
    .quad isr_13
    .quad isr_14
    .quad isr_15
    .quad isr_16
    .quad isr_17
    .quad isr_18
    .quad isr_19
    .quad isr_20
    .quad isr_21
    .quad isr_22
    .quad isr_23
    .quad isr_24
    .quad isr_25
    .quad isr_26
    .quad isr_27
    .quad isr_28
    .quad isr_29
    .quad isr_30
    .quad isr_31
    .quad isr_32
    .quad isr_33
    .quad isr_34
    .quad isr_35
    .quad isr_36
    .quad isr_37
    .quad isr_38
    .quad isr_39
    .quad isr_40
    .quad isr_41
    .quad isr_42
    .quad isr_43
    .quad isr_44
    .quad isr_45
    .quad isr_46
    .quad isr_47
    .quad isr_48
    .quad isr_49
    .quad isr_50
    .quad isr_51
    .quad isr_52
    .quad isr_53
    .quad isr_54
    .quad isr_55
    .quad isr_56
    .quad isr_57
    .quad isr_58
    .quad isr_59
    .quad isr_60
    .quad isr_61
    .quad isr_62
    .quad isr_63
    .quad isr_64
    .quad isr_65
    .quad isr_66
    .quad isr_67
    .quad isr_68
    .quad isr_69
    .quad isr_70
    .quad isr_71
    .quad isr_72
    .quad isr_73
    .quad isr_74
    .quad isr_75
    .quad isr_76
    .quad isr_77
    .quad isr_78
    .quad isr_79
    .quad isr_80
    .quad isr_81
    .quad isr_82
    .quad isr_83
    .quad isr_84
    .quad isr_85
    .quad isr_86
    .quad isr_87
    .quad isr_88
    .quad isr_89
    .quad isr_90
    .quad isr_91
    .quad isr_92
    .quad isr_93
    .quad isr_94
    .quad isr_95
    .quad isr_96
    .quad isr_97
    .quad isr_98
    .quad isr_99
    .quad isr_100
    .quad isr_101
    .quad isr_102
    .quad isr_103
    .quad isr_104
    .quad isr_105
    .quad isr_106
    .quad isr_107
    .quad isr_108
    .quad isr_109
    .quad isr_110
    .quad isr_111
    .quad isr_112
    .quad isr_113
    .quad isr_114
    .quad isr_115
    .quad isr_116
    .quad isr_117
    .quad isr_118
    .quad isr_119
    .quad isr_120
    .quad isr_121
    .quad isr_122
    .quad isr_123
    .quad isr_124
    .quad isr_125
    .quad isr_126
    .quad isr_127
    .quad isr_128
    .quad isr_129
    .quad isr_130
    .quad isr_131
    .quad isr_132
    .quad isr_133
    .quad isr_134
    .quad isr_135
    .quad isr_136
    .quad isr_137
    .quad isr_138
    .quad isr_139
    .quad isr_140
    .quad isr_141
    .quad isr_142
    .quad isr_143
    .quad isr_144
    .quad isr_145
    .quad isr_146
    .quad isr_147
    .quad isr_148
    .quad isr_149
    .quad isr_150
    .quad isr_151
    .quad isr_152
    .quad isr_153
    .quad isr_154
    .quad isr_155
    .quad isr_156
    .quad isr_157
    .quad isr_158
    .quad isr_159
    .quad isr_160
    .quad isr_161
    .quad isr_162
    .quad isr_163
    .quad isr_164
    .quad isr_165
    .quad isr_166
    .quad isr_167
    .quad isr_168
    .quad isr_169
    .quad isr_170
    .quad isr_171
    .quad isr_172
    .quad isr_173
    .quad isr_174
    .quad isr_175
    .quad isr_176
    .quad isr_177
    .quad isr_178
    .quad isr_179
    .quad isr_180
    .quad isr_181
    .quad isr_182
    .quad isr_183
    .quad isr_184
    .quad isr_185
    .quad isr_186
    .quad isr_187
    .quad isr_188
    .quad isr_189
    .quad isr_190
    .quad isr_191
    .quad isr_192
    .quad isr_193
    .quad isr_194
    .quad isr_195
    .quad isr_196
    .quad isr_197
    .quad isr_198
    .quad isr_199
    .quad isr_200
    .quad isr_201
    .quad isr_202
    .quad isr_203
    .quad isr_204
    .quad isr_205
    .quad isr_206
    .quad isr_207
    .quad isr_208
    .quad isr_209
    .quad isr_210
    .quad isr_211
    .quad isr_212
    .quad isr_213
    .quad isr_214
    .quad isr_215
    .quad isr_216
    .quad isr_217
    .quad isr_218
    .quad isr_219
    .quad isr_220
    .quad isr_221
    .quad isr_222
    .quad isr_223
    .quad isr_224
    .quad isr_225
    .quad isr_226
    .quad isr_227
    .quad isr_228
    .quad isr_229
    .quad isr_230
    .quad isr_231
    .quad isr_232
    .quad isr_233
    .quad isr_234
    .quad isr_235
    .quad isr_236
    .quad isr_237
    .quad isr_238
    .quad isr_239
    .quad isr_240
    .quad isr_241
    .quad isr_242
    .quad isr_243
    .quad isr_244
    .quad isr_245
    .quad isr_246
    .quad isr_247
    .quad isr_248
    .quad isr_249
    .quad isr_250
    .quad isr_251
    .quad isr_252
    .quad isr_253
    .quad isr_254
    .quad isr_255
"#
);

unsafe extern "C" {
    static isr_table: [u64; VECTORS];
}

static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();
static BREAKPOINTS: AtomicUsize = AtomicUsize::new(0);
static UNDEFINED_INSTRUCTIONS: AtomicUsize = AtomicUsize::new(0);
static EXPECT_UNDEFINED_INSTRUCTION: AtomicBool = AtomicBool::new(false);
static STRAY_INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        // SAFETY: reading the stub address table the assembly above defines.
        let stub = |vector: usize| VirtAddr::new(unsafe { isr_table[vector] });
        // SAFETY (every set_handler_addr below): each stub saves a TrapFrame,
        // calls the handler and returns with iretq after dropping the vector
        // and error code; the stub pushes a dummy error code exactly for the
        // vectors where the CPU does not.
        unsafe {
            idt.divide_error.set_handler_addr(stub(0));
            idt.debug.set_handler_addr(stub(1));
            idt.non_maskable_interrupt.set_handler_addr(stub(2));
            idt.breakpoint.set_handler_addr(stub(3));
            idt.overflow.set_handler_addr(stub(4));
            idt.bound_range_exceeded.set_handler_addr(stub(5));
            idt.invalid_opcode.set_handler_addr(stub(6));
            idt.device_not_available.set_handler_addr(stub(7));
            idt.double_fault.set_handler_addr(stub(8));
            idt.invalid_tss.set_handler_addr(stub(10));
            idt.segment_not_present.set_handler_addr(stub(11));
            idt.stack_segment_fault.set_handler_addr(stub(12));
            idt.general_protection_fault.set_handler_addr(stub(13));
            idt.page_fault.set_handler_addr(stub(14));
            idt.x87_floating_point.set_handler_addr(stub(16));
            idt.alignment_check.set_handler_addr(stub(17));
            idt.machine_check.set_handler_addr(stub(18));
            idt.simd_floating_point.set_handler_addr(stub(19));
            idt.virtualization.set_handler_addr(stub(20));
            idt.cp_protection_exception.set_handler_addr(stub(21));
            idt.vmm_communication_exception.set_handler_addr(stub(29));
            idt.security_exception.set_handler_addr(stub(30));
            for vector in FIRST_INTERRUPT_VECTOR..VECTORS {
                idt[vector as u8].set_handler_addr(stub(vector));
            }
            // Vectors the CPU never raises here still need a gate: a device
            // can send them, and a missing gate is a #NP in whatever ran.
            for vector in UNUSED_EXCEPTION_VECTORS {
                every_gate(&mut idt)[vector].set_handler_addr(stub(vector));
            }
            // Tasks enter the kernel through this gate (`int`), so ring 3 may use it.
            idt[super::user::SYSCALL_VECTOR]
                .set_handler_addr(stub(usize::from(super::user::SYSCALL_VECTOR)))
                .set_privilege_level(x86_64::PrivilegeLevel::Ring3);
            // A double fault runs on its own stack: the one that faulted may
            // be gone. gdt::init put that stack in the TSS's IST.
            idt.double_fault
                .set_handler_addr(stub(8))
                .set_stack_index(super::gdt::DOUBLE_FAULT_IST_INDEX);
        }
        idt
    });
    idt.load();
}

/// Exception vectors without a field of their own in the `x86_64` crate's
/// table (coprocessor overrun, reserved, hypervisor injection): none of them
/// is raised by the CPU this kernel runs on, and none pushes an error code.
const UNUSED_EXCEPTION_VECTORS: [usize; 10] = [9, 15, 22, 23, 24, 25, 26, 27, 28, 31];

/// The table as its 256 gates in vector order.
fn every_gate(idt: &mut InterruptDescriptorTable) -> &mut [Entry<HandlerFunc>; VECTORS] {
    const _: () = assert!(
        core::mem::size_of::<InterruptDescriptorTable>()
            == VECTORS * core::mem::size_of::<Entry<HandlerFunc>>()
    );
    // SAFETY: the table is `#[repr(C)]`: the 256 gates of SDM Vol. 3A §6.14.1
    // in vector order (the size assert above), and every `Entry<F>` has the
    // same layout (`F` only appears in a `PhantomData`).
    unsafe { &mut *(idt as *mut InterruptDescriptorTable).cast::<[Entry<HandlerFunc>; VECTORS]>() }
}

pub(super) fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 22] = [
        "divide error",
        "debug",
        "NMI",
        "breakpoint",
        "overflow",
        "bound range",
        "invalid opcode",
        "device not available",
        "double fault",
        "coprocessor overrun",
        "invalid TSS",
        "segment not present",
        "stack fault",
        "general protection",
        "page fault",
        "reserved",
        "x87 FP",
        "alignment check",
        "machine check",
        "SIMD FP",
        "virtualization",
        "control protection",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("reserved")
}

#[unsafe(no_mangle)]
extern "C" fn x86_exception_handler(frame: &mut TrapFrame) {
    // Nothing in this kernel sends NMIs: one is a device's message (delivery
    // mode NMI) or the platform's. It is counted and whatever ran resumes.
    if frame.vector == VECTOR_NMI {
        STRAY_INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let syscall = frame.vector == u64::from(super::user::SYSCALL_VECTOR);
    // An exception vector or the system call gate that the local APIC
    // delivered is a device's message, not a fault or a call of the task.
    if (syscall || frame.vector < FIRST_INTERRUPT_VECTOR as u64)
        && super::interrupts::in_service(frame.vector as u8)
    {
        STRAY_INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        super::interrupts::end_of_interrupt();
        super::user::preempt_if_due(frame);
        return;
    }
    // A task's system call or fault goes back to the scheduler; its device
    // interrupts are handled below like any other and resume it.
    if super::user::from_user(frame) && (syscall || frame.vector < FIRST_INTERRUPT_VECTOR as u64) {
        super::user::trap_from_user(frame);
    }
    match frame.vector {
        vector if vector == u64::from(super::user::SYSCALL_VECTOR) => {
            panic!(
                "system call gate used from the kernel at rip {:#x}",
                frame.rip
            )
        }
        vector if vector >= FIRST_INTERRUPT_VECTOR as u64 => {
            super::interrupts::dispatch(vector as u8);
            super::user::preempt_if_due(frame);
        }
        // int3 is a trap: RIP already points past it, so just resume.
        VECTOR_BREAKPOINT => {
            BREAKPOINTS.fetch_add(1, Ordering::SeqCst);
        }
        VECTOR_INVALID_OPCODE if EXPECT_UNDEFINED_INSTRUCTION.swap(false, Ordering::SeqCst) => {
            UNDEFINED_INSTRUCTIONS.fetch_add(1, Ordering::SeqCst);
            frame.rip += UD2_LEN;
        }
        vector => {
            let fault_address = if vector == VECTOR_PAGE_FAULT {
                x86_64::registers::control::Cr2::read_raw()
            } else {
                0
            };
            panic!(
                "unhandled exception: {} (vector {}), error code {:#x}, rip {:#x}, faulting address {:#x}, rsp {:#x}",
                exception_name(vector),
                vector,
                frame.error_code,
                frame.rip,
                fault_address,
                frame.rsp
            );
        }
    }
}

/// Device messages with an exception or system-call vector, and NMIs, that
/// the handler dropped since boot.
pub fn stray_interrupts() -> usize {
    STRAY_INTERRUPTS.load(Ordering::SeqCst)
}

/// Executes `int3`; the handler counts it and execution resumes after it.
pub fn breakpoint() {
    x86_64::instructions::interrupts::int3();
}

pub fn breakpoints_seen() -> usize {
    BREAKPOINTS.load(Ordering::SeqCst)
}

/// Executes `ud2` with the handler told to expect it and skip it.
pub fn undefined_instruction() {
    EXPECT_UNDEFINED_INSTRUCTION.store(true, Ordering::SeqCst);
    // SAFETY: the #UD handler skips the 2-byte ud2 when it was announced above.
    unsafe { core::arch::asm!("ud2") };
}

pub fn undefined_instructions_seen() -> usize {
    UNDEFINED_INSTRUCTIONS.load(Ordering::SeqCst)
}
